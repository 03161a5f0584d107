"""Benchmark tasks as registered specs (`axk/tasks/base.py`); AuditoryBench's two are built in
(`axk/tasks/auditorybench.py`)."""

from axk.tasks import auditorybench
from axk.tasks.base import HEADS
from axk.tasks.base import NO_ROLE
from axk.tasks.base import PROTOCOL_METRICS
from axk.tasks.base import PROTOCOL_TITLES
from axk.tasks.base import PROTOCOLS
from axk.tasks.base import Task
from axk.tasks.base import choice_words
from axk.tasks.base import get
from axk.tasks.base import infer
from axk.tasks.base import names
from axk.tasks.base import register
