"""Audio features: librosa on the host, a JAX log-mel front end on device, JAX augmentation.

`features` computes log-mel, MFCC and their statistics with librosa and caches them; `frontend`
computes the same log-mel and MFCC in JAX (importable without librosa); `augment` holds
SpecAugment, mixup, time shift and gain. Submodules are imported explicitly
(`from research.audio import frontend`), so importing the package does not pull in librosa.
"""
