"""Training-step throughput on CPU: our jitted step and loop against PyTorch eager and compiled.

Every side trains the same CNN (conv3x3-BN-ReLU-maxpool2x2 stages, global mean pooling, a dense
head; `research.models.CNN`) from the same initial weights (Flax's, copied into PyTorch) on the
same data, with SGD + momentum 0.9 and softmax cross-entropy:

- `jax-step`: `research.train.steps.train_step_jit` (state donated) called `--steps` times on one
  batch already on the device, synchronised once at the end of a round; from 2 threads on it
  is compiled with XLA:CPU's multi-threaded Eigen convolutions (`research.sharding.cpu_jit`),
  as every training step of ours is;
- `jax-loop`: the inner part of `research.train.loop.train_and_evaluate`: a host batch cut
  from a permuted numpy array per step, the jitted step, and the previous step's metrics
  fetched after the next step is queued (the loop's overhead per step is printed);
- `jax-devices`: the pinned CPUs exposed as that many host devices (`jax_num_cpu_devices`)
  and the loop's compiled step (`research.train.steps.compile_train_steps`) data-parallel over
  them (the batch split, BatchNorm statistics and gradients summed across devices), called as
  `jax-step` is; with one thread it is one device;
- `jax-composite`: `jax-step` with the CNN's first stage as JAX operations instead of the
  native kernel of `research.models.native` (`RESEARCH_NATIVE=0`): what that kernel gains;
- `jax-library`: `jax-step` with the model built from Flax's and lax's own operations
  (`nn.max_pool`, `nn.BatchNorm`, `lax.conv_general_dilated`, no native first stage) instead
  of `research.models.ops`, which replaces them with the same values and gradients: what those
  replacements gain on this backend (issue 11 asks that they stay fast on a GPU too;
  `benchmarks/device_check.sh` runs this comparison there);
- `torch-eager`: `zero_grad`, forward, loss, `backward`, `step`, the batch a tensor in memory;
- `torch-compile`: the same with `torch.compile(model)` (compiled per batch shape); when it cannot
  compile here (no C compiler, an unsupported platform), the reason is printed.

Devices: JAX runs on its default backend and PyTorch on CUDA when it has it, else on the CPU
(the table's first line names each side's device); `jax-devices` is skipped off the CPU.

Threads: each side runs in its own child process pinned with `os.sched_setaffinity` to the first
`--threads` CPUs before anything is imported; PyTorch also gets `torch.set_num_threads`. Thread
flags do not limit XLA:CPU in jax 0.10, but its thread pool follows the affinity mask; each row
prints CPU time over wall time to show what was used. Rounds alternate between the sides (the
order rotating), so load from other processes hits all sides alike; the figures are medians over
rounds with the worst round beside them, ratios are taken within each round against
`torch-eager`, and the first call (compilation) is reported separately.

Run (the default measures batch 32 and 128 on 1 and 2 threads, about 3 minutes on 2 cores):

    python -m benchmarks.train
    python -m benchmarks.train --threads 1 --batch 32 --rounds 3 --sides jax-step torch-eager

Every side calls `research.sharding.reuse_host_memory` first, as the experiments do
(`--no-reuse-host-memory` turns it off: with glibc's default malloc both frameworks page-fault
their temporary memory in again on every step, about 1.35x slower at batch 128). The
`jax-devices` side is what any script gets with `JAX_NUM_CPU_DEVICES=2` (or
`XLA_FLAGS=--xla_force_host_platform_device_count=2`); it is not the default, since it does not
speed `make run` up.

Where it stands (issue 11 asks for >= 1.0x PyTorch eager on 2 threads at batch 32 and 128):
met since session 20, by the native first stage of `research.models.native` (the one-channel
conv - BatchNorm - ReLU - max pool as one C++ kernel through XLA's FFI). On the 2-core AVX2 VM
of session 20, `--threads 2 --sides jax-step jax-composite torch-eager --rounds 7` on an idle
machine, four runs: jax-step 1.16-1.32x / 1.20-1.34x PyTorch eager at batch 32 / 128 (worst
rounds 0.97-1.24x), jax-composite (the same step on JAX operations) 1.08-1.29x / 1.02-1.23x in
the same runs (the composite moves most with the VM); one thread (`--rounds 5`) 1.22x / 1.16x
and 1.01x / 0.94x. Before it, eleven runs in sessions 16-19 on another VM gave 0.89-1.11x and
0.78-1.02x: parity within that VM's 20% drift. What was measured and tried, session by session,
with the figures: `benchmarks/train_history.md`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time

SIDES = ("jax-step", "jax-loop", "jax-devices", "jax-composite", "jax-library", "torch-eager",
         "torch-compile")


def _parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--batch", type=int, nargs="+", default=[32, 128], help="batch sizes")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                   help="CPUs each side is pinned to (one set of child processes per value)")
    p.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES),
                   help="what to measure; ratios are against torch-eager when it is measured")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per side and batch size")
    p.add_argument("--steps", type=int, default=10, help="training steps per round")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps after the first call")
    p.add_argument("--height", type=int, default=40, help="mel bands (input height)")
    p.add_argument("--width", type=int, default=64, help="frames (input width)")
    p.add_argument("--channels", type=int, nargs="+", default=[16, 32, 32],
                   help="channels of the conv stages")
    p.add_argument("--classes", type=int, default=10, help="number of classes")
    p.add_argument("--examples", type=int, default=512,
                   help="examples in the data set the loop side draws its batches from")
    p.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (momentum 0.9)")
    p.add_argument("--eigen-convolutions", action="store_true",
                   help="JAX sides with research.sharding.configure_cpu_backend: XLA:CPU's "
                        "multi-threaded Eigen convolutions from 2 CPUs on in every program "
                        "(the training steps have them anyway), the first convolution's "
                        "kernel gradient as one tall image per core")
    p.add_argument("--cpu-devices", type=int, default=0,
                   help="host devices of the jax-devices side (default: one per pinned CPU)")
    p.add_argument("--no-reuse-host-memory", dest="reuse_host_memory", action="store_false",
                   help="leave glibc's malloc at its defaults in every side (default: "
                        "research.sharding.reuse_host_memory in every side, as the experiments "
                        "do; without it XLA:CPU's large buffers page-fault on every step)")
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    return p.parse_args(argv)


def _data(args):
    import numpy as np

    rng = np.random.default_rng(0)
    n = max(args.examples, max(args.batch))
    x = rng.normal(size=(n, args.height, args.width, 1)).astype(np.float32)
    y = rng.integers(0, args.classes, n).astype(np.int32)
    return x, y


def _train_flops(args) -> float:
    """Hand count of one example's training FLOPs: 3x the forward convolutions and dense layer."""
    total, cin, h, w = 0, 1, args.height, args.width
    for c in args.channels:
        total += 2 * h * w * 9 * cin * c
        cin, h, w = c, max(1, h // 2), max(1, w // 2)
    return 3.0 * (total + 2 * cin * args.classes)


def _use_library_ops() -> None:
    """Build `research.models.CNN` from Flax's and lax's own operations in this process.

    `nn.max_pool`, `nn.BatchNorm` and `lax.conv_general_dilated` in place of the ones in
    `research.models.ops`, which replace them with the same values and gradients; as
    `tests/test_models.py` swaps them to check that.
    """
    import flax.linen as nn
    from jax import lax

    import research.models.cnn as cnn

    cnn.max_pool = lambda x, window: nn.max_pool(x, tuple(window), strides=tuple(window))
    cnn.BatchNorm = nn.BatchNorm
    cnn.conv_general_dilated = lax.conv_general_dilated


def _jax_side(side, args, conn):
    import jax

    devices = 1
    if side == "jax-devices":
        devices = args.cpu_devices or len(os.sched_getaffinity(0))
    if devices > 1:  # before any device is touched
        jax.config.update("jax_num_cpu_devices", devices)
    import jax.numpy as jnp
    import numpy as np
    import optax

    from research import sharding as sh
    from research.losses import Loss
    from research.models import CNN
    from research.train.state import TrainState
    from research.train.steps import compile_train_steps, state_sharding, train_step_jit

    if side == "jax-devices" and jax.default_backend() != "cpu":
        conn.send({"error": f"host devices are a CPU side (JAX runs on "
                            f"{jax.default_backend()} here)"})
        return
    if side in ("jax-composite", "jax-library"):
        os.environ["RESEARCH_NATIVE"] = "0"  # the first stage as JAX operations
    if side == "jax-library":
        _use_library_ops()

    x, y = _data(args)
    model = CNN(channels=tuple(args.channels), num_outputs=args.classes, pool=(2, 2),
                batch_norm=True)
    variables = model.init(jax.random.PRNGKey(0), jnp.asarray(x[:2]), train=False)
    if side == "jax-library":  # the swap took: Flax's pooling is a reduce_window
        text = str(jax.make_jaxpr(lambda v: model.apply(v, x[:2]))(variables))
        assert "reduce_window_max" in text, "jax-library: the model does not use nn.max_pool"
    conn.send({"variables": jax.tree_util.tree_map(np.asarray, variables),
               "threads_seen": os.cpu_count(), "device": str(jax.devices()[0])})
    tx = optax.sgd(args.lr, momentum=0.9)
    loss = Loss("softmax_ce", num_classes=args.classes)
    key = jax.random.PRNGKey(1)
    runners = {}
    for b in args.batch:
        # A copy per batch size: the step donates the state, which would delete `variables`.
        fresh = jax.tree_util.tree_map(jnp.array, variables)
        state = TrainState.create(apply_fn=model.apply, variables=fresh, tx=tx, loss=loss)
        batch = {"x": jax.device_put(x[:b]), "y": jax.device_put(y[:b])}
        step = train_step_jit
        if side == "jax-devices":
            # The loop's step over a data mesh: K=1 steps per call, one batch [1, B, ...].
            mesh = sh.data_mesh(jax.devices()[:devices])
            sh.check_divisible(b, mesh, "--batch")
            steps = compile_train_steps(mesh, state, resident=False)
            state = jax.device_put(state, state_sharding(mesh, state))
            split = sh.batch_sharding(mesh, leading=1)
            batch = {k: sh.put(np.asarray(v)[None], split) for k, v in batch.items()}

            # Metrics stay as the loop keeps them, [K] per call: slicing out [0] on every
            # step was an eager cross-device op that cost this side 20% at batch 32.
            step = steps
        t0 = time.perf_counter()
        state, metrics = step(state, batch, key)
        first_loss = float(np.asarray(metrics["loss"]).reshape(-1)[0])
        first = time.perf_counter() - t0
        box = {"state": state, "step": 0, "epoch": -1, "perm": None}

        def bare(steps, box=box, batch=batch, step=step):
            state = box["state"]
            for _ in range(steps):
                state, _ = step(state, batch, key)
            jax.block_until_ready(state)
            box["state"] = state

        def loop(steps, box=box, b=b):
            # The inner part of train_and_evaluate: host batch per step, metrics pulled after
            # the next step is queued.
            state, pending = box["state"], None
            spe = len(x) // b
            for _ in range(steps):
                epoch, i = divmod(box["step"], spe)
                if epoch != box["epoch"]:
                    box["perm"] = np.random.default_rng([0, epoch]).permutation(len(x))
                    box["epoch"] = epoch
                idx = box["perm"][i * b:(i + 1) * b]
                state, metrics = train_step_jit(state, {"x": x[idx], "y": y[idx]}, key)
                box["step"] += 1
                if pending is not None:
                    values = {k: float(v) for k, v in jax.device_get(pending).items()}
                    if not np.isfinite(values["loss"]):
                        raise FloatingPointError("non-finite loss")
                pending = metrics
            jax.device_get(pending)
            box["state"] = state

        run = loop if side == "jax-loop" else bare
        run(args.warmup)
        runners[b] = (run, first, first_loss)
    _serve(conn, runners, str(jax.devices()[0]))


def _torch_side(side, args, variables, threads, conn):
    try:
        import numpy as np
        import torch
        from torch import nn
    except ImportError as e:
        conn.send({"error": f"torch is not importable ({e}); pip install torch to include it"})
        return
    torch.set_num_threads(threads)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x, y = _data(args)
    params, stats = variables["params"], variables["batch_stats"]
    channels = args.channels

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            layers, cin = [], 1
            for c in channels:
                layers += [nn.Conv2d(cin, c, 3, padding=1, bias=False),
                           nn.BatchNorm2d(c, eps=1e-5, momentum=0.1), nn.ReLU(),
                           nn.MaxPool2d(2)]
                cin = c
            self.features = nn.Sequential(*layers)
            self.fc = nn.Linear(cin, args.classes)

        def forward(self, x):
            return self.fc(self.features(x).mean(dim=(2, 3)))

    def make_net():
        net = Net()
        with torch.no_grad():
            for i in range(len(channels)):
                conv, bn = net.features[4 * i], net.features[4 * i + 1]
                # Flax [kh, kw, in, out] -> PyTorch [out, in, kh, kw]
                conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(
                    np.transpose(params[f"Conv_{i}"]["kernel"], (3, 2, 0, 1)))))
                bn.weight.copy_(torch.from_numpy(params[f"BatchNorm_{i}"]["scale"]))
                bn.bias.copy_(torch.from_numpy(params[f"BatchNorm_{i}"]["bias"]))
                bn.running_mean.copy_(torch.from_numpy(stats[f"BatchNorm_{i}"]["mean"]))
                bn.running_var.copy_(torch.from_numpy(stats[f"BatchNorm_{i}"]["var"]))
            net.fc.weight.copy_(torch.from_numpy(np.ascontiguousarray(
                params["Dense_0"]["kernel"].T)))
            net.fc.bias.copy_(torch.from_numpy(params["Dense_0"]["bias"]))
        return net.to(dev).train()

    criterion = nn.CrossEntropyLoss()
    runners = {}
    for b in args.batch:
        net = make_net()
        opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9)
        fwd = net
        if side == "torch-compile":
            fwd = torch.compile(net, dynamic=False)
        xb = torch.from_numpy(np.ascontiguousarray(np.transpose(x[:b], (0, 3, 1, 2)))).to(dev)
        yb = torch.from_numpy(y[:b].astype(np.int64)).to(dev)

        def step(fwd=fwd, opt=opt, xb=xb, yb=yb):
            opt.zero_grad(set_to_none=True)
            loss = criterion(fwd(xb), yb)
            loss.backward()
            opt.step()
            return loss

        t0 = time.perf_counter()
        try:
            first_loss = step().item()
        except Exception as e:  # noqa: BLE001 - any compiler failure: report it, measure the rest
            conn.send({"error": f"torch.compile failed: {type(e).__name__}: "
                                f"{str(e).strip().splitlines()[0][:300] if str(e) else ''}"})
            return
        first = time.perf_counter() - t0

        def run(steps, step=step):
            for _ in range(steps):
                loss = step()
            loss.item()

        run(args.warmup)
        runners[b] = (run, first, first_loss)
    _serve(conn, runners, str(dev))


def _serve(conn, runners, device: str):
    """Tell the parent the first-call figures, then time rounds on request until told to stop."""
    conn.send({"first": {b: (first, loss) for b, (_, first, loss) in runners.items()},
               "device": device})
    while True:
        msg = conn.recv()
        if msg is None:
            return
        b, steps = msg
        c0, t0 = time.process_time(), time.perf_counter()
        runners[b][0](steps)
        wall = time.perf_counter() - t0
        conn.send((wall, (time.process_time() - c0) / wall))


def _child(side, args, cpus, variables, conn):
    # Pin before importing anything that starts threads (XLA's pool follows the mask).
    os.sched_setaffinity(0, cpus)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(len(cpus))
    try:
        if args.reuse_host_memory:  # both sides alike, before any framework starts threads
            from research.sharding import reuse_host_memory

            reuse_host_memory()
        if side.startswith("jax"):
            if args.eigen_convolutions:
                from research.sharding import configure_cpu_backend

                configure_cpu_backend()
            _jax_side(side, args, conn)
        else:
            _torch_side(side, args, variables, len(cpus), conn)
    except Exception as e:  # noqa: BLE001 - report to the parent instead of hanging it
        conn.send({"error": f"{type(e).__name__}: {e}"})


def _measure(args, threads: int, ctx) -> dict:
    """All sides pinned to `threads` CPUs; returns per-side results for each batch size."""
    cpus = set(sorted(os.sched_getaffinity(0))[:threads])
    if len(cpus) < threads:
        return {"error": f"only {len(cpus)} CPUs available"}
    procs, conns, out, variables = {}, {}, {}, None
    order = sorted(args.sides, key=lambda s: not s.startswith("jax"))  # weights come from JAX
    if "jax-step" not in order and "jax-loop" not in order:
        order = ["jax-step"] + order  # the weights' source; not timed
    for side in order:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_child, args=(side, args, cpus, variables, child), daemon=True)
        proc.start()
        try:
            first = parent.recv()
            if "variables" in first:
                variables = first.pop("variables")
                first = parent.recv()
        except EOFError:
            first = {"error": f"the child process died (exit code {proc.exitcode})"}
        if "error" in first:
            out[side] = {"error": first["error"]}
            proc.join(5)
            continue
        procs[side], conns[side] = proc, parent
        out[side] = {b: {"first_call_s": f, "first_loss": loss, "rates": [], "cpu_per_wall": [],
                         "device": first["device"]}
                     for b, (f, loss) in first["first"].items()}
    timed = [s for s in conns if s in args.sides]
    for r in range(args.rounds):
        for b in args.batch:
            for k in range(len(timed)):
                side = timed[(k + r) % len(timed)]
                conns[side].send((b, args.steps))
                reply = conns[side].recv()
                if isinstance(reply, dict):
                    raise RuntimeError(f"{side}: {reply['error']}")
                wall, cpu = reply
                out[side][b]["rates"].append(b * args.steps / wall)
                out[side][b]["cpu_per_wall"].append(cpu)
    for side, conn in conns.items():
        conn.send(None)
        procs[side].join(10)
    return {s: v for s, v in out.items() if s in args.sides}


def main(argv=None) -> dict:
    """Run the benchmark, print a table per thread count and return the results."""
    args = _parse(argv)
    ctx = mp.get_context("spawn")  # JAX and PyTorch are not fork-safe
    flops = _train_flops(args)
    load = os.getloadavg()
    print(f"CNN {args.channels} on {args.height}x{args.width}, {args.classes} classes; "
          f"{args.rounds} rounds x {args.steps} steps, alternating sides; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")
    print("threads: each side in a child process pinned with os.sched_setaffinity (XLA:CPU "
          "follows the mask; its thread flags do not limit it in jax 0.10); PyTorch also "
          "torch.set_num_threads")
    results = {"args": vars(args), "load_average": load, "train_flops_per_example": flops,
               "threads": {}}
    for threads in args.threads:
        res = _measure(args, threads, ctx)
        results["threads"][threads] = res
        print(f"\n== {threads} thread(s) ==")
        if "error" in res:
            print(f"skipped: {res['error']}")
            continue
        for side, r in res.items():
            if "error" in r:
                print(f"{side}: skipped: {r['error']}")
        ok = {s: r for s, r in res.items() if "error" not in r}
        print("devices: " + ", ".join(f"{s} {r[args.batch[0]]['device']}" for s, r in ok.items()))
        print(f"{'side':<14} {'batch':>5} {'median/s':>9} {'worst/s':>8} {'GFLOP/s':>8} "
              f"{'CPU/wall':>8} {'first s':>8} {'first loss':>10} {'vs eager':>8} "
              f"{'worst':>6}")
        for b in args.batch:
            eager = ok.get("torch-eager", {}).get(b)
            for side, r in ok.items():
                m = r[b]
                med = statistics.median(m["rates"])
                m.update(median=med, worst=min(m["rates"]),
                         cpu_per_wall_median=statistics.median(m["cpu_per_wall"]))
                ratio = worst = "-"
                if eager is not None:
                    ratios = [a / e for a, e in zip(m["rates"], eager["rates"])]
                    m["ratio_vs_eager"] = {"median": statistics.median(ratios),
                                           "worst": min(ratios)}
                    ratio = f"{m['ratio_vs_eager']['median']:.2f}x"
                    worst = f"{m['ratio_vs_eager']['worst']:.2f}x"
                print(f"{side:<14} {b:>5} {med:>9.0f} {m['worst']:>8.0f} "
                      f"{med * flops / 1e9:>8.2f} {m['cpu_per_wall_median']:>8.2f} "
                      f"{m['first_call_s']:>8.2f} {m['first_loss']:>10.5f} {ratio:>8} "
                      f"{worst:>6}")
            if "jax-step" in ok and "jax-loop" in ok:
                step_ms = 1e3 * b / ok["jax-step"][b]["median"]
                loop_ms = 1e3 * b / ok["jax-loop"][b]["median"]
                print(f"{'':<14} {b:>5} loop overhead per step: {loop_ms - step_ms:+.2f} ms "
                      f"({loop_ms:.2f} ms loop vs {step_ms:.2f} ms bare step, medians)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2, default=str)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
