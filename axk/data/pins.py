"""Which upstream commit of AuditoryBench axk downloads, and the sha256 of each of its files.

The benchmark lives in the public repository HJ-Ok/AudioBERT, whose files have already
changed once (the older flat layout shipped an animal train file identical to its test
file). A download from a moving branch could hand two runs of one config different inputs,
so axk downloads only a named commit (`--config.data.revision`) and checks every file:

  * a commit in `PINS`: each file must have the sha256 recorded here; a file that differs
    is an error naming it and both hashes.
  * any other commit: the files' sha256 are recorded at the first download (in
    `<cache>/<commit>/revision.json`) and checked on every later use; the run records the
    data as not pinned by axk.

What is known offline, and what is not: `PINS` holds the last commit of the repository's
`main` branch that axk could read (2024-09-26), with the hashes of its files computed from
a clone of that commit. That commit has only the older flat layout, whose animal train file
is its test file, so its animal task is refused when loaded (its pitch files load). The
commit that introduced the per-task layout (`dataset/<task>/<split>.csv`) could not be read
when this table was written: name a commit to download with
`--config.data.revision=<40-hex commit>`, and add it to `PINS` once its files are verified. Until then the default, `main`, is pinned by content: the sha256 of
the per-task layout's train, dev and test files as published there (see `PINS["main"]`).
"""

from __future__ import annotations

import dataclasses
import re

REPOSITORY = "HJ-Ok/AudioBERT"
# `{revision}` is a commit; `{path}` is the file's path in the repository.
RAW_URL = "https://raw.githubusercontent.com/{repository}/{revision}/{path}"
COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclasses.dataclass(frozen=True)
class Pin:
  """One verified upstream commit.

  Attributes:
    layout: "per_task" (`dataset/<task folder>/<split>.csv`) or "flat"
      (`dataset/<task folder>_<split>.csv`, the older layout).
    files: upstream path -> sha256 of its bytes. A split not listed is not published at
      that commit.
    note: what to know about the commit.
  """

  layout: str
  files: dict[str, str]
  note: str = ""


PINS: dict[str, Pin] = {
    "4fc71aee2dd209093614d80dcc0b2428f8c51bf2": Pin(
        layout="flat",
        files={
            "dataset/animal_sound_recognition_train.csv":
                "97ac96eb193210a8f784499c0730fc9cc3a9b226a699d2e16c5f1ad7d3568721",
            "dataset/animal_sound_recognition_dev.csv":
                "aa0dafc049362001036cfd7deae393d2dc1598c4729465783562606532408865",
            "dataset/animal_sound_recognition_test.csv":
                "97ac96eb193210a8f784499c0730fc9cc3a9b226a699d2e16c5f1ad7d3568721",
            "dataset/animal_sound_recognition_wiki.csv":
                "df9ae08661b758b538d3a82945a4a1c2892cf9cd47e7f9e8f8a11ba3ff981924",
            "dataset/sound_pitch_comparsion_train.csv":
                "8bac045736ba081f09dbbdd37ea2821bd00126baec26f458393a7db24ec02eeb",
            "dataset/sound_pitch_comparsion_dev.csv":
                "2fd28e5f1ea70e678238f35d0dbee9dea1e113f43e28519a62349c94743e8d75",
            "dataset/sound_pitch_comparsion_test.csv":
                "4c6d34142861b57380bf1fb591adc7a7cb2d852a8f1faf2d81b92be3f55ccf86",
            "dataset/sound_pitch_comparsion_wiki.csv":
                "a1fb94da5bf50b6f5168e0f38ca731fa6239a1484cbc95f70d600ccc4947185b",
        },
        note="main as of 2024-09-26; flat layout only: the animal train file is the test "
             "file (refused when loaded), pitch loads"),
}
# The per-task layout on `main`, pinned by content: the sha256 of its train, dev and test
# files, computed from a copy of those files as published there. Its commit is not known
# offline, so the branch is named; a file that changes on `main` no longer matches and is
# refused with its name and both hashes (then name a commit with --config.data.revision).
# Its wiki files are not pinned and are left out; a commit gives them.
PINS["main"] = Pin(
    layout="per_task",
    files={
        "dataset/animal_sound_recognition/train.csv":
            "a614d94c30793139845d8d1097d6bbb25f7c36c73bf004fcddef301da1569529",
        "dataset/animal_sound_recognition/dev.csv":
            "fa12ccac6add3f91ccae6f76294ce52ed8163f166cfddcb4da02f8eb8ce88b16",
        "dataset/animal_sound_recognition/test.csv":
            "a1986e5db85008292668ad9446b429ba3684b34242acd5da47a1e0b764c916ad",
        "dataset/sound_pitch_comparsion/train.csv":
            "2d8351319f351345dac45889934c47ccf19763878873fff651bf0ed74910c034",
        "dataset/sound_pitch_comparsion/dev.csv":
            "2fd28e5f1ea70e678238f35d0dbee9dea1e113f43e28519a62349c94743e8d75",
        "dataset/sound_pitch_comparsion/test.csv":
            "4c6d34142861b57380bf1fb591adc7a7cb2d852a8f1faf2d81b92be3f55ccf86",
    },
    note="the per-task layout on main, pinned by the sha256 of its train/dev/test files "
         "(commit not recorded); wiki not pinned, left out")
DEFAULT_REVISION = "main"


def upstream_path(layout: str, folder: str, split: str) -> str:
  """The file of task folder `folder`, split `split`, in the repository at that layout."""
  if layout == "flat":
    return f"dataset/{folder}_{split}.csv"
  return f"dataset/{folder}/{split}.csv"


def url(revision: str, path: str) -> str:
  return RAW_URL.format(repository=REPOSITORY, revision=revision, path=path)
