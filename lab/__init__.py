"""The project's test lab (development only; not part of the installed
package): a throwaway real Incus in its own network namespace, clients in
routing domains, throwaway namespaces for kernel tests and benchmarks, and
the plugin run against them.

Modules, one concern each:

- ``processes``: running commands, pidfiles, ending processes, bounded waits
  (and ``reaper.py``, the subreaper wrapper daemons run under)
- ``netns``: throwaway network namespaces (``NetNS``, ``Namespaces``, ``inside``)
- ``image``: the busybox container image
- ``clients``: client namespaces in H's routing domains (``Client``)
- ``incus``: the Incus lab (``IncusLab``)
- ``cluster``: a two-member Incus cluster (``IncusCluster``)
- ``plugin``: the plugin in a lab (``PluginDaemon``, ``run_cli``)
- ``demo``: the README's demo (``python -m lab.demo``)
"""

from .clients import STRICT_TABLE_METRIC, Client
from .image import ImageError, build_busybox_image
from .incus import INCUSD, IncusLab
from .processes import LabCommandError, LabError, until

__all__ = [
    "INCUSD",
    "STRICT_TABLE_METRIC",
    "Client",
    "ImageError",
    "IncusLab",
    "LabCommandError",
    "LabError",
    "build_busybox_image",
    "until",
]
