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
- `jax-library`: `jax-step` with the model built from Flax's and lax's own operations
  (`nn.max_pool`, `nn.BatchNorm`, `lax.conv_general_dilated`) instead of `research.models.ops`,
  which replaces them with the same values and gradients: what those replacements gain on
  this backend (issue 11 asks that they stay fast on a GPU too; `benchmarks/device_check.sh`
  runs this comparison there);
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

Measured on an idle machine (2-core AMD EPYC VM, load average 0.9, jax 0.10.2, torch 2.13 CPU,
`python -m benchmarks.train --rounds 3 --sides jax-step jax-loop torch-eager`, before
`reuse_host_memory` existed, so with glibc's default malloc; see below), samples per second,
median of 3 rounds (ratio to PyTorch eager within rounds, median / worst round):

    threads batch   jax-step            jax-loop            torch-eager
    1       32      1615 (1.14x/1.13x)  1626 (1.14x/1.07x)  1432
    1       128      854 (0.80x/0.73x)   892 (0.81x/0.70x)  1051
    2       32      1778 (0.82x/0.68x)  1655 (0.70x/0.67x)  2243
    2       128     1119 (0.54x/0.53x)  1129 (0.55x/0.52x)  2087

Loop overhead per step (the loop against the bare step, medians): -0.1 / -6.4 ms on 1 thread,
+1.3 / -1.1 ms on 2 threads (batch 32 / 128), within the rounds' noise. Compilation: about 2-3 s
for JAX. Earlier, under load (load average 4.6), torch-compile ran at 0.76-0.87x eager.

Where the time goes (`jax.profiler`, batch 128, one core, with `reuse_host_memory`; 95 ms a step):
the convolutions and their derivatives (XLA:CPU's YNNPACK fusions) about 56 ms, the max-pool and
ReLU selects about 15 ms, layout transposes for the kernel gradients about 10 ms, the one-channel
first convolution 1.5 ms. With glibc's default malloc the step took 127-155 ms: the same loops then
wrote into freshly faulted pages (the first convolution's loop 12.3 ms instead of 1.5, the
transposes 16 ms), which an earlier version of this note read as the activations leaving the cache;
PyTorch's batch-128 step gains as much from the setting. With 2 CPUs XLA:CPU uses 1.3 CPU seconds
per second against PyTorch's 1.96: its convolutions at these sizes barely run in parallel, and none
of the XLA:CPU flags of jax 0.10 that were tried (oneDNN, XNNPACK, the concurrency-optimised
scheduler) changed that. What does use the second core is data parallelism over two host devices,
the `jax-devices` side (`python -m benchmarks.train --threads 2 --rounds 3 --sides jax-step
jax-devices torch-eager`, idle machine): 1,822 / 1,445 samples/s at batch 32 / 128 against
jax-step's 1,768 / 1,074 and PyTorch eager's 2,067 / 1,805, that is 0.90x / 0.81x PyTorch (jax-step
0.83x / 0.60x in the same rounds), 1.55-1.74 CPUs busy. Its results differ from one device's by
float rounding of the cross-device sums (the first loss agrees to 1e-5 in the smoke test).

With `--eigen-convolutions` (`research.sharding.configure_cpu_backend`: XLA's multi-threaded
Eigen convolutions instead of YNNPACK's; 1.7-1.9 CPUs busy) jax-step ran on 2 threads at
2,243 / 1,834 samples/s (batch 32) and 1,335 / 1,219 (batch 128) in two runs, against 1,717 /
1,544 and 1,072 / 1,030 without it in the runs between (1.2-1.3x); against PyTorch eager in the
same rounds that is 0.85-1.11x at batch 32 and 0.67-1.01x at batch 128 over six runs (the VM's
rate moves by 20% between runs). On one thread Eigen's convolutions are slower (0.99x / 0.61x
PyTorch eager against YNNPACK's 1.14x / 0.80x), so the option only acts from 2 CPUs on.
With it, the first convolution's kernel gradient (a batch-1 convolution of the batch stacked
into one tall image, 4 ms single-threaded in a 50-60 ms step) is now one tall image per core,
which XLA:CPU runs at once: 6-13% off the batch-128 step and 5-10% off batch 32 in paired
rounds in one process (session 8); two benchmark runs afterwards gave 0.83x / 0.80x and 0.88x /
0.99x PyTorch eager (batch 32 / 128), so still not reliably at parity on 2 threads.

Also measured on 2 CPUs and not kept (session 8): a YNNPACK convolution stays single-threaded
whatever its size (a 1.4 s one at 1.00 CPUs busy), and the oneDNN / XNNPACK fusion flags of jax
0.10 leave convolutions as they are (the compiled program has no such fusion); splitting every
multi-channel convolution into two half-batch ones (1.36 CPUs busy on one convolution, but
0.70x / 0.59x against 0.76x / 0.69x for the whole step); two processes of one core each
(`jax.distributed`, gloo): 700 / 1,311 samples/s, because a gloo all-reduce of 4 KB on
loopback takes 1 ms (4 ms with each process pinned) and a step has seven.
`--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED`: no consistent change in two
runs. Session 9, jax-step against PyTorch eager at batch 128 in one run each (baseline 0.63-0.69x
in three runs): `--xla_cpu_use_xnnpack=true
--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY` 0.66-0.92x over three
runs (0.68-0.70x at batch 32 against 0.66-0.70x: no gain in paired runs),
`--xla_cpu_experimental_ynn_fusion_type=+LIBRARY_FUSION_TYPE_ELTWISE` 0.73x (1.52 CPUs busy, but
a slower step), `--xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_RUNTIME` 0.64x,
`--xla_cpu_use_fusion_emitters=false` 0.64x (half the compile time). Two executions of one
program from two host threads do run in parallel (what the grid engine now uses, see
`benchmarks/landscape.py`), but a training step's BatchNorm couples the whole batch.
The lead left for later: XLA:CPU runs every elementwise fusion single-threaded too (a trace of the
2-core batch-128 step with Eigen convolutions has exactly one thread in a traced operation 53% of
the time; the stage-1 pooling gradient, 5.7 ms, is one event on one thread).
A stand-alone copy of the model whose batch runs as two independent halves through the whole
network (BatchNorm sums combined across them) was 12-23% faster on 2 cores with YNNPACK (b128
1,940 vs 1,582 and 1,744 vs 1,552 samples/s, b32 2,170 vs 1,807; unchanged on one core, and
no gain with Eigen convolutions), yet the executor overlapped the halves only 21% of the time
(1.48 CPUs busy): about 0.85x PyTorch eager, with float rounding that depends on the number of
halves. Not built into `research.models.CNN`.
Session 11 rebuilt that probe as one jitted step (SGD with momentum, batch 128, the process
pinned to both cores; `/tmp` probe) with the batch as K parts through the whole network: K = 1 /
2 / 4 / 8 took 82.7 / 66.7 / 64.8 / 67.4 ms a step (1,547 / 1,919 / 1,976 / 1,899 samples/s,
1.24-1.51 CPUs busy); either flag for the concurrency-optimised scheduler left K = 2 where it was
(65.2 and 67.7 ms). A trace of K = 2: exactly one thread busy 71% of the step, and the two parts'
YNNPACK convolutions mostly one after the other (a part's 2-5 ms input and kernel gradients ran
with the other core idle). This benchmark right afterwards (`--threads 2 --rounds 3 --sides
jax-step torch-eager`): PyTorch eager 2,485 samples/s at batch 128 and 2,273 at 32, jax-step
1,505 (0.60x) and 1,575 (0.75x), so even K = 4 would be about 0.8x.

Session 12, the `jax-devices` side (2 cores as 2 host devices, data parallel):
- It used to slice each call's metrics (`[K]`) to their first entry on every step: an eager
  cross-device operation that cost the side 20% at batch 32 and 8% at batch 128 in paired
  rounds. The loop never did that; the side now keeps the metrics as the loop does.
- A trace (batch 128) showed three collective permutes per step: the one-channel first
  convolution's kernel gradient, a convolution of the batch stacked into one tall image, was
  split along the image's height, each device swapping edge rows with the other. Steps are now
  traced under their mesh (`compile_train_steps`), so the model stacks one tall image per
  device and the permutes are gone: +5% / +7.5% (batch 128 / 32) in paired rounds.
- Left: in a trace both cores are busy 92% of the step; each device waits about 2.5 ms of a
  51 ms step at the seven all-reduces (BatchNorm statistics, gradients), a multi-device call
  returns only when it has finished (so about 1 ms between steps with nothing queued), and one
  device can start 0-3 ms after the other. Per CPU second the two frameworks are even (2,521
  samples/s on 1.73 CPUs against PyTorch's 2,892 on 1.98).
- Runs (`--threads 2 --rounds 5 --sides jax-step jax-devices torch-eager`, the VM's rate
  moving by 30% between them), jax-devices against PyTorch eager at batch 32 / 128: 1.03x /
  0.88x (before the per-device images), then 0.94x / 0.96x, 0.71x / 0.78x, 0.79x / 0.88x and
  0.98x / 0.98x (jax-step 0.64-0.81x / 0.62-0.69x; on one thread, last run, 1.08x / 1.02x).
  Four host devices on the 2 cores (`--cpu-devices 4`): 0.77x / 0.88x. Two steps unrolled in
  one call: +2% / +4%. Parity within the noise, not reliably above it.
- Also tried: the first convolution's kernel gradient as a patch matrix and one matrix product
  (41.5 -> 55.9 ms a step at batch 64 on one core).
Any script gets this side's setting with `JAX_NUM_CPU_DEVICES=2` (or
`XLA_FLAGS=--xla_force_host_platform_device_count=2`): training then splits the batch over the
two devices. It does not speed `make run` up (training 14 s either way; the landscape 40 s
against 33 s), so the default stays one device.

Session 13 ran on another 2-core AMD EPYC VM, with AVX2 but no AVX-512, where YNNPACK's
convolutions behave differently: a profile of the batch-128 step on one core (145 ms) had 50 ms
in one convolution, the kernel gradient of the 16 -> 32 convolution (755 MFLOP, 15 GFLOP/s),
against 13-14 ms for its forward pass and input gradient (55-70 GFLOP/s); the kernel gradient is
a convolution whose input features are the batch, and its cost per example grew with the batch
(at 8-32 examples 22-32 ms per 128, at 128 examples 61 ms). Eigen runs the same kernel gradient
at 45-60 GFLOP/s, and YNNPACK leaves convolutions with at most 16 input and output features to
Eigen, so `research.models.ops` now computes it on the CPU as convolutions of at most 16 examples
and 16 output channels (`_chunked_conv`). Paired rounds in one process (`/tmp` probe, the
benchmark's model and step), one library kernel gradient -> chunks, samples/s:

    CPUs  devices  batch
    1     1        128     1,003 -> 1,324 and 867 -> 1,122 in another run (1.29-1.32x)
    1     1        64      1,185 -> 1,398 (1.18x)
    1     1        32      1,220 -> 1,231 (1.01x)
    2     1        128     962 -> 1,560 and 841 -> 1,410 (1.62-1.68x)
    2     1        64      1,154 -> 1,580 (1.37x)
    2     1        32      999 -> 1,251 (1.25x)
    2     2        128     1,556 -> 1,620 and 1,565 -> 1,742 (1.04-1.11x)

This benchmark on that VM (`--threads 1 2 --batch 32 128 --sides jax-step jax-devices
torch-eager --rounds 5`), before / after, against PyTorch eager in the same rounds at batch 32 /
128: one thread, jax-step 1.05x / 1.01x after; two threads, jax-step 0.64x / 0.49x before and
0.91x / 0.83x after, jax-devices 0.82x / 0.76x before and 0.86x / 0.85x after (CPU/wall 1.53 for
jax-step, 1.59-1.67 for jax-devices, 1.98 for PyTorch). With `--eigen-convolutions` (before
the chunks; every convolution Eigen's): jax-step 0.86x / 0.85x, jax-devices 0.82x / 1.01x. The
same step from one run to the next took 55-88 ms (2 devices, batch 128): the VM's rate moves by
60% within minutes, so only ratios within a run mean anything. Where the 2 threads still go
(`jax.profiler`, batch 128, one device): YNNPACK's forward and input-gradient convolutions, 40 of
84 ms, single-threaded. `--xla_cpu_multi_thread_eigen=false` does nothing in jax 0.10 (an
Eigen convolution kept 1.86 CPUs busy with it, 1.88 without), yet a copy of the jax-devices side
with it, measured in the same runs, came out 9% / 15% and 4% / 5% faster (batch 32 / 128) than
the side without it: two identical configurations differ by that much within one run, so
ratios closer to each other than about 15% do not tell the configurations apart.

Session 14 (the same AVX2 VM as session 13): with 2 CPUs, every training step of ours is now
compiled with Eigen's convolutions (`research.sharding.cpu_jit`: a per-program compiler option,
the fusion types of jax 0.10's default without YNNPACK's convolutions; one core keeps YNNPACK's),
and the kernel gradients are then one convolution again, not chunks. Paired rounds in one
process (`/tmp` probe, this benchmark's model and step, one device, 2 cores), YNNPACK with
chunks -> Eigen without, step time: batch 128 90.7 -> 77.2 and 107.4 -> 96.5 ms (1.17x /
1.11x), batch 64 1.22x / 1.12x, batch 32 1.36x / 1.10x; 1.19-1.25x at batch 128 in three
earlier runs with the chunks kept (Eigen without them 1.07-1.11x faster than with, batch 32 and
64 within 4%); 1.70-1.90 CPUs busy against 1.40-1.60. Over 2 host devices 1.11x / 0.98x
(batch 128 / 32), over 4 host devices on the 2 cores 1.03x / 0.97x. Without YNNPACK's
reductions too (only its dots) the step was 1.2-1.4x slower; with YNNPACK's elementwise fusions
added, 1.3x slower; the concurrency-optimised scheduler changed nothing. This benchmark
afterwards, against PyTorch eager in the same rounds (batch 32 / 128): two threads, jax-step
1.08x / 1.00x, 1.07x / 1.01x, 1.03x / 1.00x, 0.96x / 0.93x and 0.99x / 0.95x in five runs
(0.83x / 0.78x just before the change), jax-loop 1.05x / 1.14x, 0.97x / 0.95x, 1.03x / 1.02x
and 0.84x / 0.90x, jax-devices
0.86x / 0.97x and 0.85x / 0.94x; one thread (unchanged code) jax-step 1.22x / 1.05x, 1.09x /
0.94x and 1.06x / 1.03x. The worst rounds still dip to 0.63-0.92x: parity within the VM's
noise, not a margin above it. Where the 2-core step's time goes now (`jax.profiler`, one core,
the same program): Eigen's convolutions 80 of 123 ms, of which the 16 -> 32 convolution's
forward pass and input gradient 21 and 20 ms (about 36 GFLOP/s, against YNNPACK's 12-16 ms),
the rest BatchNorm, ReLU and pooling passes over the first stage's 21 MB activations.

Session 15 (the same VM, slower and noisier: the same variant moved between 59 and 99 ms a
batch-128 step from one run to the next): two threads, jax-step 0.90x / 0.85x and 0.83x / 0.79x
PyTorch eager (batch 32 / 128; PyTorch's own rate moved from 1,330 / 1,675 to 1,741 / 1,805
samples/s between the runs). What was measured, none of it kept:
- Per CPU-second the two are even: at batch 128 on two threads a JAX step took 148 ms of CPU
  time, PyTorch's 150 ms. The gap is utilisation: 1.61-1.85 CPUs busy against 1.97-1.99.
  XLA:CPU's workers sleep and wake between operations, 300-500 voluntary context switches per
  batch-128 step (80-140 at batch 32), PyTorch's OpenMP threads spin (none). Idle low-priority
  spinners on both cores (`chrt -i 0`, to keep the vCPUs from halting) changed nothing.
- The same Eigen program on one core and on two, per operation (`jax.profiler`): the
  convolutions scale with the cores; the memory-bound passes over the first stage's activations
  (the pooling gradient, the first convolution's shifted multiply-adds, layout transposes) and
  YNNPACK's reductions take as long on two cores as on one (0.7-1.2x). The whole step: 98 ms
  on one core, 70 ms on two (1.4x).
- BatchNorm, ReLU and max pooling as one `custom_jvp` whose tangent goes through each window's
  first maximum (values, gradients and Hessian-vector products equal to Flax's within 1e-6): its
  gradient's reductions would run over the pooled quarter of the elements. XLA:CPU has no
  multi-output fusion of siblings and expands `optimization_barrier` before fusing, so every
  consumer recomputed the window's maximum from the full-size input: on one core 0-14% slower,
  on two within the noise (paired rounds in one process).
- The window's maximum, its position and the value there as one variadic reduce: 8x slower than
  the chain of selects (a scalar loop).
- XLA:CPU runs independent operations one after the other except Eigen's asynchronous
  convolutions: two independent YNNPACK convolutions on two cores kept 1.02-1.04 CPUs busy, so
  YNNPACK's faster single-threaded convolutions cannot be spread by splitting the batch (the
  step with each convolution in two halves 1.06x / 1.28x slower than unsplit, batch 128 / 32).
  Eigen's convolutions in batch-32 pieces: the batch-128 step 0.74x.
- jaxlib 0.10.2 accepts `xla_cpu_use_onednn`, `xla_cpu_experimental_onednn_custom_call` and the
  oneDNN and XNNPACK fusion types, but none of them takes a convolution (their matchers take
  dots and elementwise operations). The convolution as patches times the kernel: the patches
  alone took 82 ms against the whole convolution's 17 (16 -> 32, batch 128, one core).
- Both non-default schedulers (`xla_cpu_scheduler_type`), the fusion emitters on or off, tiling
  propagation, and transparent huge pages for glibc's heap (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`,
  about 500 MB of it in huge pages): within the noise or slower.

Session 16 (the same VM): two threads on an idle machine, four runs of `--threads 2 --sides
jax-step torch-eager --rounds 7` one after the other: jax-step 1.03x / 1.02x, 1.11x / 1.00x,
0.94x / 0.93x and 0.89x / 0.87x PyTorch eager (batch 32 / 128; our rate fell from 1,810 to
1,398 samples/s across the runs, PyTorch's stayed at 1,530-1,815): parity within the VM's
drift, not above it. Tried, none kept (paired rounds in one process, idle machine, 25 rounds of
3 steps, batch 128 / 32, median step-time ratio against the code as it is):
- The fused BatchNorm + ReLU + max pooling of session 15, mended: its slowness came from taking
  the ReLU after the pool, which let XLA fuse the whole window chain into the layout transpose
  of the next convolution's kernel gradient (41-50 ms for that one transpose). With the ReLU
  before the pool, as the model has it, and each window's first maximum found on
  `sign(a) * x` (a sign flip: exact wherever XLA recomputes it), values, gradients and
  Hessian-vector products agree with Flax's to 1.6e-6, and the transpose reads the stored pooled
  output again. 0.96x / 1.02x: the reductions run over the pooled quarter, but the input
  gradient's fusion recomputes the window's first maximum for every element.
- Making XLA store each window's first-maximum position (one byte per pooled output) by
  computing it as a reduction: YNNPACK takes the reduction and first writes the full-size mask;
  XLA's own reduction took 13 ms for it (one core, batch 128, 16 channels).
- BatchNorm statistics of the first stage from the 9 x 9 Gram matrix of the input's shifts (so
  the convolution's output is never stored): the patch matrix and its product alone took 8-12
  ms, more than the statistics they replace (about 7 ms).
- The multi-channel convolutions' kernel gradients over the batch stacked into tall images (as
  the first convolution's): the output gradient's transpose is gone, but the input's transpose
  to (C, rows, W, 1) costs as much: 0.98x / 0.96x; with the fused op above 1.04x / 0.98x
  (quartiles 0.94-1.08x).
- Where the second core goes: XLA marks every large elementwise fusion for two partitions
  (`outer_dimension_partitions`), and a compute-heavy one uses both cores (CPU/wall 1.90). An
  affine + ReLU pass over 21 MB took 5.8-6.1 ms on one core and 4.8-6.7 ms on two (CPU/wall
  1.05-1.49), a (B, H, W, C) -> (C, H, W, B) transpose of it 27-30 ms on one core (1.5 GB/s)
  and 24-27 ms on two: the memory-bound passes are bounded by this VM's memory system, which
  is also why our rate drifts with the VM more than PyTorch's.
- BatchNorm's sums as partial sums over 64-row slices in one elementwise fusion, then a small
  reduction: as fast as YNNPACK's reduction (21 MB: 6.0 against 6.9 ms on one core, 5.1 against
  5.2 on two), no gain.

Session 17 (the same VM, the step's code unchanged): `--threads 2 --sides jax-step torch-eager
--rounds 7`, three runs on an idle machine: 1.08x / 0.98x, 0.97x / 0.99x, 0.89x / 0.78x (batch
32 / 128; in the last run our step kept 1.48-1.50 CPUs busy, PyTorch 1.92). The same program
moved between 65 and 98 ms a batch-128 step from one minute to the next with 0-1% steal time
(`vmstat`), its CPU/wall between 1.59 and 1.88. Session 16's reading of the memory-bound passes
needs a correction: on this VM PyTorch's `addcmul` + in-place `relu_` over the first stage's
21 MB took 4.3-5.0 ms on one thread and 1.7-1.8 ms on two, XLA's fused affine + ReLU 4.1-5.2 and
2.7-4.4 ms: the second core does help here, and XLA:CPU's two-partition loops get less from it
than PyTorch's OpenMP loops. Not kept: `xla_cpu_enable_fast_min_max` as a compiler option of the
step (0.998x in paired rounds), `--xla_cpu_use_thunk_runtime=false` (accepted, no change);
`xla_cpu_use_multi_output_fusion` is not a flag of jaxlib 0.10.2.

Session 18 (the same VM): with session 17's code, `--threads 2 --sides jax-step torch-eager
--rounds 7` gave 0.91x / 0.97x (batch 32 / 128, CPU/wall 1.67-1.72 against PyTorch's 1.96). The
probes below are paired rounds in one process (the production step through `cpu_jit`, batch 128,
2 cores, 15-21 rounds of 3 steps, median ratio against the code as it is); only the pooling
position's walk was kept:
- What the first stage costs: the same step without it (input 20x32x16, stages 32 / 32) took
  46.7 ms against 77.4 ms. So the first stage, with the second convolution's input gradient, is
  40% of the step.
- The pooling gradient's select recomputes each window's first-maximum chain for every element
  (8.2 ms, compute-bound). An upper bound: the position taken as a constant (wrong gradients)
  gave 1.05x. Making XLA store the position instead did not work: XLA:CPU fused even a float
  `sqrt`, an operation it counts as expensive, into the select (0.99-1.02x, same program).
- BatchNorm, ReLU and pooling with the pooling first. Per channel, the window maximum of
  `relu(a z + b)` equals `relu(a s max(s z) + b)` with `s = sign(a)` (a sign flip, exact). The
  values and the parameters after 4 steps agree to 7 digits, and BatchNorm's backward sums run
  over the pooled quarter (the `sum(g z)` reduction went from 5.3 to 1.5 ms). But XLA:CPU then
  recomputes the window maximum inside the layout transpose of the next convolution's kernel
  gradient: 19.8 ms for that transpose, and the step at 0.79x.
  - `lax.optimization_barrier` is removed before fusion, so it cannot stop this.
  - The pool's value as a `reduce_max`, which XLA does not duplicate, brought the step to 0.92x.
    It is still slower, because the pooling gradient moves into the padded input of the first
    convolution's kernel gradient.
  - With the sign folded into the convolution's kernel instead (`conv(x, k s) = s conv(x, k)`
    exactly, and `s = sign(scale)` since `rsqrt` is positive), nothing full-size is multiplied
    by it: 1.025x / 1.049x (batch 128 / 32; quartiles 0.95-1.11x and 0.99-1.10x), 1.06x / 0.98x
    with the `reduce_max`. That is within the noise, and it would cost the model its full-size
    stage features (sown for the equivariance analysis), so it was not built.
- One reduction for both BatchNorm sums (`sum` over `[z, z^2]` concatenated): 12.8 ms against
  2.2 ms for two reductions (one core); YNNPACK's reduction is slow on a concatenated input.
  A reduction with the first convolution's shifted multiply-adds fused into it, so that `z` is
  never stored: 18.9 ms against 1.7 ms for the stored `z`.
- The one convolution that gains nothing from the second core is Eigen's kernel gradient of the
  16 -> 32 convolution. Measured alone at batch 128, with the step's compiler options: 20.7 ms
  on one core, 19.2-21.6 ms on two (CPU/wall 1.26-1.41). Its forward pass and input gradient go
  from 18.0 / 20.5 ms to 8.9 / 9.8 ms. Of the 19-21 ms, 6 ms are the two layout transposes
  (batch as the contracted feature); the rest is a contraction of 81,920 terms into a
  3x3x16x32 kernel, which Eigen splits poorly.
  - Cut into 2 or 4 batch chunks summed: 15.7-22 ms alone, and the whole step 0.90x / 0.91x.
  - As one matrix product of the patches, or one per kernel tap: 27-35 ms.
  - Output channels in two halves: 25-30 ms.
- The pooling gradient's position found as `select_and_scatter` finds it (kept, see the
  `research.models.ops` docstring; it fixes the gradient for windows with NaNs): 1.015x /
  0.98x on two cores (batch 128 / 32), 1.03x / 1.02x on one.
- Compiler options: `xla_cpu_enable_fast_math` gave 1.05x (quartiles 1.02-1.17x). Not kept: it
  drops NaN handling and changes the rounding. `xla_cpu_prefer_vector_width=512` on AVX2 gave
  1.04x (quartiles 0.99-1.14x), within the noise.
- One elementwise pass over 21 MB written to a new buffer (affine + ReLU, as the step writes
  them): JAX 3.4-4.0 ms on one core and 2.3-3.1 ms on two (4.0 ms in one run that kept 1.1 CPUs
  busy), 1.1-1.7x from the second core; PyTorch's `addcmul` + `relu` (two passes) 5.1-5.4 ms and
  3.0-3.7 ms, 1.4-1.8x. Session 17's in-place PyTorch figures (2.5x) were its best case.

Every side now calls `research.sharding.reuse_host_memory` first (as the experiments do;
`--no-reuse-host-memory` turns it off). With glibc's default malloc a batch-128 step
page-faults all its temporary memory in again: 19,200 faults and 44 ms of system time in a
155 ms JAX step on one core. PyTorch is hit the same way. Same command, idle machine, one run
each way, samples per second (jax-step / torch-eager, ratio):

    threads batch   reuse_host_memory           glibc default
    1       32      1790 / 1673 (1.05x)         1778 / 1619 (1.11x)
    1       128     1353 / 1660 (0.83x)         1002 / 1230 (0.83x)
    2       32      1637 / 2041 (0.81x)         1518 / 1993 (0.76x)
    2       128     1482 / 2446 (0.62x)         1079 / 1676 (0.65x)

Both frameworks gain about 1.35x at batch 128, so the ratios stay where they were. Against
PyTorch as it runs by default, our step as the experiments run it is 1.10x at batch 128 on
one thread (1353 vs 1230) and 0.88x on two (1482 vs 1676).

Max pooling's derivative as a one-hot `custom_jvp` (`research.models.ops`; its gradient one
fused select instead of nested selects and a pad-and-add per window position): paired runs of
`--threads 1 --batch 128 --sides jax-step torch-eager`, old then new code, 1,115 / 1,164 ->
1,265 / 1,274 samples/s (+9-13%), batch 32 +4%, compilation 3.6 -> 3.0 s. Four runs after it,
one thread, jax-step against torch-eager in the same rounds: batch 32 1.06-1.10x, batch 128
0.86x / 0.88x / 0.92x / 0.96x (1,265-1,368 samples/s; the VM's noise); two threads (`--rounds 3
--sides jax-step jax-loop torch-eager`): 0.77x / 0.63x (1,534 / 1,451 against 2,019 / 2,344).
Where a batch-128 step's 97 ms go now (`jax.profiler`, one core): YNNPACK convolutions about 59
ms (the 16 -> 32 convolution's forward, input gradient and kernel gradient 10.3 / 10.1 / 9.2 ms,
about 37 GFLOP/s), the pooling-and-ReLU gradient and ReLU masks 13 ms (the first stage's
full-size one 6.2 ms, about a read and a write of 21 MB), layout transposes for the kernel
gradients 12 ms (the first stage's 6 ms), BatchNorm's backward reductions 6 ms. Computing the
activation after the pooling (the same values for a non-decreasing activation, a quarter of the
elements) made the step slower with either pooling derivative (0.66x against 0.87x before the
one-hot one, 0.55x against 0.86-0.96x after it, batch 128), so it was not kept.

The one-channel first convolution's kernel gradient over the batch stacked into one tall image
(`research.models.ops._stacked_conv`; session 7): a batch-1 convolution, without the layout
transposes of the output gradient that the batch-as-feature form needs. Where a batch-128 step
went (`jax.profiler`, one core): that kernel gradient 13 ms (a 6.5 ms transpose-and-compute of
the output gradient, a 5.7 ms YNNPACK convolution) of 83 ms, now 6.5 ms (2.5 ms writing the
padded gradient, a 3.8 ms convolution) of 64-71 ms; in paired rounds in one process the step
was 1.1x faster at batch 128 (74.0 against 82.9 ms, median of 8), unchanged at batch 32. Four
runs afterwards, one thread (`--threads 1 --rounds 5 --sides jax-step torch-eager`, one of them
with `--rounds 3`; idle machine, the VM's rate moving by 25% between runs): batch 32 1.09-1.12x,
batch 128 0.99x, 1.01x, 0.89x, 1.00x PyTorch eager (1,427-1,803 samples/s); two threads
(`--threads 2 --rounds 3 --sides jax-step jax-devices torch-eager`): jax-step 0.72x / 0.69x,
jax-devices 0.73x / 0.86x (batch 32 / 128).

Before the model changes of that issue (`nn.max_pool`, `nn.BatchNorm`, the library convolution
for the one-channel input) the jitted step ran at 0.42x / 0.37x PyTorch eager (batch 32 / 128,
2 threads). The `jax-library` side measures that in the same run (`--threads 1 --rounds 5
--sides jax-step jax-library torch-eager`, idle machine, with the stacked kernel gradient): 759
/ 714 samples/s against jax-step's 1,928 / 1,803 at batch 32 / 128 (2.5x / 2.5x; 0.42x / 0.39x
PyTorch eager, jax-step 1.09x / 1.00x).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time

SIDES = ("jax-step", "jax-loop", "jax-devices", "jax-library", "torch-eager", "torch-compile")


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
