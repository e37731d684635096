"""doctor: a table and JSON of what this environment can do.

Each probe imports its library inside a try block: an absent package is reported as absent,
a broken one as an error with its message, and neither stops the other probes.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from suite_core.atomic import write_json
from suite_core.errors import UserError

FLAGS = {"--require": "require[]", "--json": "json"}

CAPABILITIES = ("gpu", "torch", "torch-cuda", "onnx", "onnx-cuda", "paddle", "paddle-cuda",
                "video", "caches", "models", "driver")


def _version(*dists: str) -> str | None:
    for d in dists:
        try:
            return metadata.version(d)
        except metadata.PackageNotFoundError:
            continue
    return None


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


def arch_covered(capability: tuple[int, int], arch_list: list[str]) -> tuple[bool, str]:
    """Whether code compiled for ``arch_list`` runs on a GPU of ``capability``.

    SASS (``sm_XY``) runs on the same major at an equal or higher minor (sm_121 runs sm_120
    cubins); PTX (``compute_XY``) is JIT-compiled for any newer GPU.
    """
    major, minor = capability
    sass, ptx = [], []
    for a in arch_list:
        kind, _, num = a.partition("_")
        if not num.rstrip("af").isdigit():
            continue
        n = int(num.rstrip("af"))
        (sass if kind == "sm" else ptx).append((n // 10, n % 10) if n < 1000 else (n // 100, n % 100))
    ok_sass = [s for s in sass if s[0] == major and s[1] <= minor]
    if ok_sass:
        best = max(ok_sass)
        return True, f"sm_{major}{minor} runs sm_{best[0]}{best[1]} code (same major)"
    ok_ptx = [p for p in ptx if p <= (major, minor)]
    if ok_ptx:
        best = max(ok_ptx)
        return True, f"PTX compute_{best[0]}{best[1]} JIT-compiles for sm_{major}{minor}"
    return False, f"no sm_{major}x SASS or older PTX in {', '.join(arch_list) or 'an empty list'}"


def probe_nvidia_smi() -> dict[str, Any]:
    from suite_core.runner import run, which

    if not which("nvidia-smi"):
        return {"present": False, "why": "nvidia-smi not found (no driver, or no --nv)"}
    try:
        res = run(["nvidia-smi", "--query-gpu=name,driver_version,compute_cap",
                   "--format=csv,noheader"], check=False, timeout=20)
    except UserError as exc:
        return {"present": False, "why": exc.line()}
    gpus = [dict(zip(("name", "driver", "compute_cap"), (c.strip() for c in ln.split(",")),
                     strict=False)) for ln in res.stdout.splitlines() if ln.strip()]
    return {"present": bool(gpus), "gpus": gpus,
            "why": None if gpus else (res.stderr.strip().splitlines() or ["no GPU listed"])[-1]}


def _driver_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def image_name(cfg: Any = None, env: dict[str, str] | None = None) -> str | None:
    """The image this process runs in: its %environment sets CONTAINERS_IMAGE; else the config's."""
    env = os.environ if env is None else env
    if env.get("CONTAINERS_IMAGE"):
        return env["CONTAINERS_IMAGE"]
    image = cfg.get("image") if cfg is not None and hasattr(cfg, "get") else None
    return str(image.get("name")) if image is not None and image.get("name") else None


def partitions_with(cfg: Any, needed: str) -> list[str]:
    """``cluster/partition`` names whose configured driver (cluster.partitions.<p>.driver) suffices."""
    cluster = cfg.get("cluster") if cfg is not None and hasattr(cfg, "get") else None
    if not cluster:
        return []
    out = []
    for key, part in (cluster.get("partitions") or {}).items():
        drv = part.get("driver") if part is not None else None
        if drv and part.get("gpu") and _driver_tuple(str(drv)) >= _driver_tuple(needed):
            out.append(f"{cluster.get('name')}/{key} ({part.get('name')}, driver {drv})")
    return out


def check_driver_floor(found: str | None, image: str | None, cfg: Any = None) -> tuple[bool, str]:
    """Whether the node's driver runs the image's CUDA; the one line to stop with when it does not.

    The floor is the image config's ``driver_min`` (hydra_conf/image/<name>.yaml: CUDA 13 needs an
    R580+ driver); a node below it would fail deep inside a stage with a CUDA error instead.
    """
    if not found:
        return True, "no NVIDIA driver visible: nothing to compare"
    if not image:
        return True, f"driver {found}; not inside a known image (CONTAINERS_IMAGE unset)"
    from containers.locks import load_images

    spec = load_images().get(image)
    if spec is None or not spec.driver_min:
        return True, f"driver {found}; image {image} declares no driver floor"
    if _driver_tuple(found) >= _driver_tuple(spec.driver_min):
        return True, f"driver {found} >= {spec.driver_min} (CUDA {spec.cuda}, image {image})"
    where = partitions_with(cfg, spec.driver_min)
    has = ("partitions with it: " + ", ".join(where)) if where else (
        "no partition of this cluster config records a driver that new (cluster.partitions.<p>.driver)")
    return False, (f"NVIDIA driver {found} on this node is older than {spec.driver_min}, which image "
                   f"{image} (CUDA {spec.cuda}) needs; {has}")


def driver_floor_error(cfg: Any = None) -> str | None:
    """For a job's first step: the one-line reason to stop, or None (used by entrypoints.gpu_guard)."""
    smi = probe_nvidia_smi()
    drivers = [g.get("driver") for g in smi.get("gpus", []) if g.get("driver")]
    ok, line = check_driver_floor(drivers[0] if drivers else None, image_name(cfg), cfg)
    return None if ok else line


def probe_torch() -> dict[str, Any]:
    if importlib.util.find_spec("torch") is None:
        return {"present": False}
    try:
        import torch
    except Exception as exc:
        return {"present": True, "error": _short(exc)}
    info: dict[str, Any] = {"present": True, "version": torch.__version__,
                            "cuda": torch.version.cuda}
    try:
        info["arch_list"] = torch.cuda.get_arch_list()
        info["cuda_available"] = torch.cuda.is_available()
        info["device_count"] = torch.cuda.device_count() if info["cuda_available"] else 0
        if info["cuda_available"]:
            cap = torch.cuda.get_device_capability(0)
            info["device"] = torch.cuda.get_device_name(0)
            info["capability"] = f"{cap[0]}.{cap[1]}"
            info["arch_covered"], info["arch_why"] = arch_covered(cap, info["arch_list"])
            x = torch.ones(8, device="cuda")
            info["cuda_op_ok"] = float((x + x).sum().item()) == 16.0
    except Exception as exc:
        info["error"] = _short(exc)
    return info


def probe_onnxruntime() -> dict[str, Any]:
    if importlib.util.find_spec("onnxruntime") is None:
        return {"present": False}
    try:
        import numpy as np
        import onnxruntime as ort

        from entrypoints.onnx_tiny import add_model
    except Exception as exc:
        return {"present": True, "error": _short(exc)}
    info: dict[str, Any] = {"present": True, "version": ort.__version__,
                            "package": "onnxruntime-gpu" if _version("onnxruntime-gpu") else "onnxruntime",
                            "providers": ort.get_available_providers()}
    order = ["CUDAExecutionProvider", "ROCMExecutionProvider", "CPUExecutionProvider"]
    best = next((p for p in order if p in info["providers"]), "CPUExecutionProvider")
    info["best_provider"] = best
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(add_model(), sess_options=opts,
                                    providers=list(dict.fromkeys([best, "CPUExecutionProvider"])))
        x = np.arange(4, dtype=np.float32)
        (y,) = sess.run(None, {"x": x})
        info["inference_ok"] = bool(np.allclose(y, 2 * x))
        info["provider_used"] = sess.get_providers()[0]
        if best != info["provider_used"]:
            info["fallback_why"] = f"{best} listed but the session fell back to {info['provider_used']}"
    except Exception as exc:
        info["inference_ok"] = False
        info["error"] = _short(exc)
    return info


def probe_paddle() -> dict[str, Any]:
    if importlib.util.find_spec("paddle") is None:
        return {"present": False}
    try:
        import paddle
    except Exception as exc:
        return {"present": True, "error": _short(exc)}
    info: dict[str, Any] = {"present": True, "version": paddle.__version__}
    try:
        info["compiled_with_cuda"] = bool(paddle.device.is_compiled_with_cuda())
        info["device_count"] = (paddle.device.cuda.device_count()
                                if info["compiled_with_cuda"] else 0)
        info["cuda"] = paddle.version.cuda() if info["compiled_with_cuda"] else None
    except Exception as exc:
        info["error"] = _short(exc)
    return info


def probe_video() -> dict[str, Any]:
    readers = {}
    for module, dists in (("decord", ("decord", "eva-decord", "decord2")), ("av", ("av",)),
                          ("cv2", ("opencv-python-headless", "opencv-python",
                                   "opencv-contrib-python"))):
        if importlib.util.find_spec(module) is None:
            continue
        dist = next((d for d in dists if _version(d)), module)
        readers[dist if module == "decord" else module] = _version(*dists) or "unknown"
    return {"readers": readers, "present": bool(readers)}


def probe_caches(env: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    from suite_core.env import CACHE_VARS

    for key in CACHE_VARS:
        path = env.get(key)
        if not path:
            out[key] = {"path": None, "writable": False, "why": "not set"}
            continue
        try:
            Path(path).mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path, prefix=".doctor-"):
                pass
            out[key] = {"path": path, "writable": True}
        except OSError as exc:
            out[key] = {"path": path, "writable": False, "why": exc.strerror or str(exc)}
    return out


def probe_models(cfg: Any) -> dict[str, Any]:
    roots = {"models": str(cfg.paths.models), "staged_models": str(cfg.paths.staged_models)}
    return {k: {"path": v, "present": os.path.isdir(v),
                "entries": len(os.listdir(v)) if os.path.isdir(v) else 0} for k, v in roots.items()}


def capabilities(r: dict[str, Any]) -> dict[str, tuple[bool, str]]:
    t, o, p = r["torch"], r["onnxruntime"], r["paddle"]
    smi = r["nvidia_smi"]
    torch_cuda = bool(t.get("cuda_available") and t.get("arch_covered") and t.get("cuda_op_ok"))
    onnx_cuda = o.get("provider_used") == "CUDAExecutionProvider" and bool(o.get("inference_ok"))
    paddle_cuda = bool(p.get("compiled_with_cuda") and p.get("device_count"))
    caches_ok = all(c["writable"] for c in r["caches"].values())
    return {
        "gpu": (bool(smi.get("present") or t.get("cuda_available") or onnx_cuda or paddle_cuda),
                "an NVIDIA GPU is visible" if smi.get("present") else str(smi.get("why"))),
        "torch": (bool(t.get("present") and "error" not in t),
                  t.get("error") or t.get("version") or "not installed"),
        "torch-cuda": (torch_cuda, t.get("arch_why") or t.get("error") or
                       ("torch has no CUDA device" if t.get("present") else "torch not installed")),
        "onnx": (bool(o.get("inference_ok")), o.get("error") or (
            f"ran on {o.get('provider_used')}" if o.get("present") else "onnxruntime not installed")),
        "onnx-cuda": (onnx_cuda, o.get("fallback_why") or (
            "CUDAExecutionProvider ran the test graph" if onnx_cuda else
            "CUDAExecutionProvider not available" if o.get("present") else "onnxruntime not installed")),
        "paddle": (bool(p.get("present") and "error" not in p),
                   p.get("error") or p.get("version") or "not installed"),
        "paddle-cuda": (paddle_cuda, "paddle sees a CUDA device" if paddle_cuda else (
            "paddle built without CUDA" if p.get("present") and not p.get("compiled_with_cuda")
            else "no CUDA device" if p.get("present") else "paddle not installed")),
        "video": (r["video"]["present"], ", ".join(r["video"]["readers"]) or "no video reader installed"),
        "caches": (caches_ok, "all cache dirs writable" if caches_ok else "; ".join(
            f"{k}: {v.get('why')}" for k, v in r["caches"].items() if not v["writable"])),
        "models": (any(m["present"] for m in r["models"].values()), ", ".join(
            f"{k}={v['path']}" + ("" if v["present"] else " (missing)") for k, v in r["models"].items())),
        "driver": (bool(r["driver"]["ok"]), r["driver"]["detail"]),
    }


def diagnose(cfg: Any, env: dict[str, str] | None = None) -> dict[str, Any]:
    env = dict(os.environ if env is None else env)
    result: dict[str, Any] = {
        "python": {"version": platform.python_version(), "executable": sys.executable,
                   "machine": platform.machine(), "platform": platform.platform(),
                   "libc": "-".join(platform.libc_ver()),
                   "user_site_disabled": bool(sys.flags.no_user_site or env.get("PYTHONNOUSERSITE"))},
        "nvidia_smi": probe_nvidia_smi(), "torch": probe_torch(), "onnxruntime": probe_onnxruntime(),
        "paddle": probe_paddle(), "video": probe_video(), "caches": probe_caches(env),
        "models": probe_models(cfg),
        "offline": {k: env.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")},
    }
    drivers = [g.get("driver") for g in result["nvidia_smi"].get("gpus", []) if g.get("driver")]
    ok, detail = check_driver_floor(drivers[0] if drivers else None, image_name(cfg, env), cfg)
    result["driver"] = {"found": drivers[0] if drivers else None, "image": image_name(cfg, env),
                        "ok": ok, "detail": detail}
    result["capabilities"] = {k: {"ok": ok, "detail": why} for k, (ok, why) in capabilities(result).items()}
    return result


def render(result: dict[str, Any]) -> str:
    py = result["python"]
    lines = [f"Python {py['version']} on {py['machine']} ({py['libc']}), {py['executable']}", ""]
    width = max(len(k) for k in result["capabilities"])
    for name, cap in result["capabilities"].items():
        mark = "yes" if cap["ok"] else "no "
        lines.append(f"  {name.ljust(width)}  {mark}  {cap['detail']}")
    return "\n".join(lines)


def run(cfg: Any, run: Any) -> int:
    require = [str(r) for r in (cfg.get("require") or [])]
    unknown = [r for r in require if r not in CAPABILITIES]
    if unknown:
        raise UserError(f"unknown capability '{unknown[0]}' in require",
                        fix=f"choose from: {', '.join(CAPABILITIES)}")
    with run.step("probe"):
        result = diagnose(cfg)
    run.report["doctor"] = result
    if cfg.get("json"):
        write_json(str(cfg.json), result)
        run.output(str(cfg.json))
    print(render(result))
    if not result["driver"]["ok"]:  # whatever was required: CUDA would fail deep inside a stage
        print(f"error: {result['driver']['detail']}", file=sys.stderr)
        return 1
    missing = [r for r in require if not result["capabilities"][r]["ok"]]
    if missing:
        details = "; ".join(f"{m}: {result['capabilities'][m]['detail']}" for m in missing)
        print(f"error: missing required capabilities: {details}", file=sys.stderr)
        return 1
    if require:
        print(f"\nall required capabilities present: {', '.join(require)}")
    return 0
