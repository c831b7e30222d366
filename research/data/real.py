"""Real recordings: the names of the former `research.data.real`, re-exported from their homes.

Kept so that existing imports (`from research.data import real`, `real.load_esc50`, ...) work.
New code imports from where things live:

- `research.data.audio_files`: reading audio and its errors (`read_audio`, `AudioFileError`,
  `BadFilesError`, `header_frames`, `MAX_ABS_SAMPLE`), clip lengths (`fix_length`,
  `segments`), and (path, label, split) items read into a `Loaded` split (`read_splits`,
  with bad-file reporting and the duplicate-audio check across splits);
- `research.data.folds`: ESC-50, UrbanSound8K and GTZAN from local copies, by fold
  (`load_esc50`, `load_urbansound8k`, `load_gtzan`; layouts in its docstring);
- `research.data.sonic_pi`: the kick / snare / cymbal / tabla task from the Debian
  sonic-pi-samples package (`load_sonic_pi`, `find_sonic_pi`, `sonic_pi_files`, `split_files`).

Constants are copies: setting `real.MAX_ABS_SAMPLE` changes nothing; set
`audio_files.MAX_ABS_SAMPLE`.
"""

from research.data.audio_files import (
    AUDIO_EXTENSIONS,
    MAX_ABS_SAMPLE,
    SPLITS,
    AudioFileError,
    BadFilesError,
    Loaded,
    fix_length,
    header_frames,
    read_audio,
    segments,
)
from research.data.folds import load_esc50, load_gtzan, load_urbansound8k
from research.data.sonic_pi import (
    SONIC_PI_CLASSES,
    SONIC_PI_DIRS,
    find_sonic_pi,
    load_sonic_pi,
    sonic_pi_files,
    split_files,
)

__all__ = [
    "AUDIO_EXTENSIONS", "MAX_ABS_SAMPLE", "SONIC_PI_CLASSES", "SONIC_PI_DIRS", "SPLITS",
    "AudioFileError", "BadFilesError", "Loaded", "find_sonic_pi", "fix_length", "header_frames",
    "load_esc50", "load_gtzan", "load_sonic_pi", "load_urbansound8k", "read_audio", "segments",
    "sonic_pi_files", "split_files",
]
