"""Run INSIDE a container by the real-Apptainer launcher tests: print what the process sees as JSON.

Arguments: paths to try writing a file into (``writable``) and paths to look for (``exists``),
as ``w:PATH`` and ``e:PATH``. Standard library only: it runs in the test images as they are.
"""

import json
import os
import platform
import site
import sys

out = {
    "env": dict(os.environ),
    "cwd": os.getcwd(),
    "uid": os.getuid(),
    "machine": platform.machine(),
    "python": list(sys.version_info[:2]),
    "no_user_site": bool(sys.flags.no_user_site),
    "enable_user_site": site.ENABLE_USER_SITE,
    "sys_path": sys.path,
    "nvidia_dev": os.path.exists("/dev/nvidiactl"),
    "writable": {},
    "exists": {},
}
try:
    import containers  # the checkout, through PYTHONPATH

    out["containers"] = containers.__file__
except ImportError as exc:
    out["containers"] = f"ImportError: {exc}"
try:
    import hostile_user_site  # noqa: F401  (planted in a host $HOME/.local by a test)

    out["hostile_user_site"] = True
except ImportError:
    out["hostile_user_site"] = False
for arg in sys.argv[1:]:
    kind, _, path = arg.partition(":")
    if kind == "w":
        try:
            with open(os.path.join(path, "written-inside.txt"), "w") as fh:
                fh.write("inside")
            out["writable"][path] = "ok"
        except OSError as exc:
            out["writable"][path] = exc.strerror
    else:
        out["exists"][path] = os.path.exists(path)
print(json.dumps(out))
