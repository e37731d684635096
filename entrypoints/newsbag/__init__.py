"""newsbag: bag several layout detectors over newspaper scans, fuse them, and review disagreement.

``schema`` is the data contract every stage shares; ``sources`` holds the detector adapters.
"""
