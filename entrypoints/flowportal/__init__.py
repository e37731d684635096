"""FlowPortal (video relighting + background replacement) driven from a FlowPortal checkout.

The checkout's five scripts are run as they are, in a per-run working directory that provides
what they look up relative to the cwd; this package builds their exact command lines, guards
the known traps of the status-quo scripts and makes outputs atomic and resumable. Only the
standard library (plus OpenCV for manifests) is imported: torch lives in the scripts.
"""
