"""Tasks: a registry of task specs (data, host factory, lifecycle timings) and their data."""

from esper.runtime.cifar10 import download_cifar10, load_cifar10
from esper.runtime.data import (
    InMemoryLoader,
    TaskData,
    char_lm_data,
    load_digits,
    load_mnist5k,
    load_pydoc_chars,
    load_textfile,
    load_tinystories,
)
from esper.runtime.tasks import (
    CNNHostFactory,
    TaskSpec,
    TransformerHostFactory,
    get_task,
    list_tasks,
    register_task,
)

__all__ = [
    "CNNHostFactory",
    "InMemoryLoader",
    "TaskData",
    "TaskSpec",
    "TransformerHostFactory",
    "char_lm_data",
    "download_cifar10",
    "get_task",
    "list_tasks",
    "load_cifar10",
    "load_digits",
    "load_mnist5k",
    "load_pydoc_chars",
    "load_textfile",
    "load_tinystories",
    "register_task",
]
