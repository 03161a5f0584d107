"""Methods: the registered ways of giving BERT span audio (`axk.methods.base` is the
contract). AudioBERT and ITH are built in; `get(name)` also imports a module of your own that
registers one."""

from axk.methods.base import BERT_FIELDS
from axk.methods.base import LORA_FIELDS
from axk.methods.base import Loaded
from axk.methods.base import Method
from axk.methods.base import MethodError
from axk.methods.base import get
from axk.methods.base import load_export
from axk.methods.base import names
from axk.methods.base import of_export
from axk.methods.base import register
from axk.methods import audiobert  # pylint: disable=unused-import  (registers "audiobert")
from axk.methods import ith  # pylint: disable=unused-import  (registers "ith")
