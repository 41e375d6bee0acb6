"""The cold start's head start, imported first by the package (``__init__``): the weight
download starts now, then the model loads as soon as the file is there, both on threads, while
the web stack is imported (``llmfn.host.start_model_early``)."""
from llmfn.host import start_model_early

from .loader import make_loader
from .settings import DEFAULTS

start_model_early(make_loader, DEFAULTS)
