"""The staged model set, file by file: exactly what each stage will open, by name.

Read from the fork's DGX-era scripts and the libraries they call (docs/flowportal.md, "The model
set"); the job has no network, so a file missing here fails that stage on every video:

- stage 1 ``preprocess``: BiRefNet from the HF hub cache (``refs/main`` -> its snapshot's
  ``config.json``, weights and the remote-code files); HED ``ControlNetHED.pth`` and/or Midas
  ``dpt_hybrid-midas-501f0c75.pt`` under ``Annotators/`` unless ``edge_mode=canny``;
- stage 2 ``matanyone``: ``./pretrained_models/matanyone.pth`` and, through torch hub's
  ``load_url`` into ``$TORCH_HOME/hub/checkpoints``, ``resnet50-19c8e357.pth`` (pixel encoder)
  and ``resnet18-5c106cde.pth`` (mask encoder);
- stage 4 ``iclight``: ``iclight_sd15_fc.safetensors`` (``fbc`` with a background) and SD1.5
  ``stablediffusionapi/realistic-vision-v51`` (tokenizer, text_encoder, vae, unet) from the hub cache;
- stage 5 ``flowportal``: the Wan directory per the checkout's ``config/wan2.1/wan_civitai.yaml``
  (transformer ``config.json`` + weights, VAE, T5 encoder, the ``google/umt5-xxl`` tokenizer
  folder, the CLIP image encoder).

``flowportal.layout`` maps these onto a folder: ``suite`` (ours) or ``status_quo`` (the fork's
``pretrained_models/`` tree, accepted as it is so a switch re-copies nothing).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from suite_core.errors import UserError

LAYOUTS = ("suite", "status_quo")
MATANYONE_RESNETS = ("resnet50-19c8e357.pth", "resnet18-5c106cde.pth")
ANNOTATORS = {
    "hed": ("ControlNetHED.pth",),
    "depth": ("dpt_hybrid-midas-501f0c75.pt",),
    "combined": ("ControlNetHED.pth", "dpt_hybrid-midas-501f0c75.pt"),
    "canny": (),
}
BIREFNET = "zhengpeng7/BiRefNet"
SD15 = "stablediffusionapi/realistic-vision-v51"
# What the checkout's wan_civitai.yaml says when it cannot be read (the fork's values).
WAN_DEFAULTS = {
    "transformer_subpath": "./",
    "vae_subpath": "Wan2.1_VAE.pth",
    "text_encoder_subpath": "models_t5_umt5-xxl-enc-bf16.pth",
    "tokenizer_subpath": "google/umt5-xxl",
    "image_encoder_subpath": "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth",
}


@dataclass(frozen=True)
class Need:
    """One file a stage opens: any of ``options`` will do (e.g. .safetensors or .bin)."""

    stage: str
    what: str
    options: tuple[Path, ...]

    def found(self) -> Path | None:
        return next((p for p in self.options if p.is_file()), None)


def check_layout(cfg: Any) -> str:
    layout = str(cfg.flowportal.get("layout") or "suite")
    if layout not in LAYOUTS:
        raise UserError(
            f"flowportal.layout={layout!r} is not one of {', '.join(LAYOUTS)}",
            where="flowportal.layout",
            fix="use suite (ours) or status_quo (pretrained_models/)",
        )
    return layout


def paths(cfg: Any) -> dict[str, Path]:
    """Staged locations (node-local), keyed as in ``flowportal.*``."""
    root = Path(str(cfg.flowportal.models))
    keys = ("wan", "iclight_fc", "iclight_fbc", "matanyone", "annotators", "hf_hub", "torch_home")
    return {k: root / str(cfg.flowportal[k]) for k in keys}


def wan_subpaths(checkout_root: Path | None) -> dict[str, str]:
    """The Wan file names stage 5 joins to ``--model_name``, read from the checkout's own config."""
    out = dict(WAN_DEFAULTS)
    if checkout_root is None:
        return out
    conf = checkout_root / "config" / "wan2.1" / "wan_civitai.yaml"
    with contextlib.suppress(Exception):
        from omegaconf import OmegaConf

        c = OmegaConf.to_container(OmegaConf.load(conf))
        for section in (
            "transformer_additional_kwargs",
            "vae_kwargs",
            "text_encoder_kwargs",
            "image_encoder_kwargs",
        ):
            for k, v in (c.get(section) or {}).items():
                if k in out and v:
                    out[k] = str(v)
    return out


def _hf(hub: Path, repo: str) -> tuple[Path, Path | None]:
    """(the repo's cache folder, its snapshot for ``refs/main`` or None when unknown)."""
    base = hub / ("models--" + repo.replace("/", "--"))
    try:
        rev = (base / "refs" / "main").read_text(encoding="utf-8").strip()
    except OSError:
        return base, None
    return base, (base / "snapshots" / rev) if rev and "/" not in rev and rev not in (".", "..") else None


def _hf_needs(stage: str, hub: Path, repo: str, files: list[tuple[str, tuple[str, ...]]]) -> list[Need]:
    base, snap = _hf(hub, repo)
    if snap is None:
        return [Need(stage, f"HF cache of {repo} (refs/main)", (base / "refs" / "main",))]
    return [Need(stage, f"{repo} {what}", tuple(snap / o for o in opts)) for what, opts in files]


def needs(cfg: Any, checkout_root: Path | None) -> list[Need]:
    """Every file the configured stages open, in stage order."""
    check_layout(cfg)
    m = paths(cfg)
    out: list[Need] = []
    out += _hf_needs(
        "preprocess",
        m["hf_hub"],
        BIREFNET,
        [
            ("config.json", ("config.json",)),
            ("weights", ("model.safetensors", "pytorch_model.bin")),
            ("remote code birefnet.py", ("birefnet.py",)),
            ("remote code BiRefNet_config.py", ("BiRefNet_config.py",)),
        ],
    )
    edge = str(cfg.preset.edge_mode)
    for f in ANNOTATORS.get(edge, ()):
        out.append(Need("preprocess", f"Annotators {f} (edge_mode={edge})", (m["annotators"] / f,)))
    out.append(Need("matanyone", "MatAnyone checkpoint", (m["matanyone"],)))
    for f in MATANYONE_RESNETS:
        out.append(
            Need(
                "matanyone",
                f"torch hub {f} (MatAnyone encoders)",
                (m["torch_home"] / "hub" / "checkpoints" / f,),
            )
        )
    bg = bool(cfg.video.get("bg_path"))
    out.append(
        Need("iclight", "IC-Light fbc" if bg else "IC-Light fc", (m["iclight_fbc" if bg else "iclight_fc"],))
    )
    out += _hf_needs(
        "iclight",
        m["hf_hub"],
        SD15,
        [
            ("tokenizer/vocab.json", ("tokenizer/vocab.json",)),
            ("tokenizer/merges.txt", ("tokenizer/merges.txt",)),
            ("text_encoder/config.json", ("text_encoder/config.json",)),
            ("text_encoder weights", ("text_encoder/model.safetensors", "text_encoder/pytorch_model.bin")),
            ("vae/config.json", ("vae/config.json",)),
            ("vae weights", ("vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.bin")),
            ("unet/config.json", ("unet/config.json",)),
            (
                "unet weights",
                ("unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.bin"),
            ),
        ],
    )
    wan = m["wan"]
    sub = wan_subpaths(checkout_root)
    tr = wan / sub["transformer_subpath"]
    tok = wan / sub["tokenizer_subpath"]
    out += [
        Need("flowportal", "Wan transformer config.json", (tr / "config.json",)),
        Need(
            "flowportal",
            "Wan transformer weights",
            (tr / "diffusion_pytorch_model.safetensors", tr / "diffusion_pytorch_model.bin"),
        ),
        Need("flowportal", f"Wan VAE {sub['vae_subpath']}", (wan / sub["vae_subpath"],)),
        Need(
            "flowportal",
            f"Wan T5 encoder {sub['text_encoder_subpath']}",
            (wan / sub["text_encoder_subpath"],),
        ),
        Need(
            "flowportal",
            f"umt5 tokenizer {sub['tokenizer_subpath']}/tokenizer_config.json",
            (tok / "tokenizer_config.json",),
        ),
        Need(
            "flowportal",
            f"umt5 tokenizer {sub['tokenizer_subpath']}/spiece.model or tokenizer.json",
            (tok / "spiece.model", tok / "tokenizer.json"),
        ),
        Need(
            "flowportal",
            f"Wan CLIP image encoder {sub['image_encoder_subpath']}",
            (wan / sub["image_encoder_subpath"],),
        ),
    ]
    return out


def missing(cfg: Any, checkout_root: Path | None) -> list[Need]:
    return [n for n in needs(cfg, checkout_root) if n.found() is None]


def facts(cfg: Any, checkout_root: Path | None) -> dict[str, int]:
    """Relative name -> size of every file the stages open (a model swapped for another changes it)."""
    root = Path(str(cfg.flowportal.models))
    out: dict[str, int] = {}
    for n in needs(cfg, checkout_root):
        p = n.found()
        if p is not None:
            with contextlib.suppress(OSError, ValueError):
                out[p.relative_to(root).as_posix()] = p.stat().st_size
    return out


def preflight(cfg: Any, checkout_root: Path | None) -> None:
    """Refuse to start when a file a stage opens is absent: name it, its stage, and how to stage it."""
    miss = missing(cfg, checkout_root)
    if not miss:
        return
    n = miss[0]
    more = f" (and {len(miss) - 1} more: {', '.join(x.what for x in miss[1:4])})" if len(miss) > 1 else ""
    alt = f" (or {', '.join(p.name for p in n.options[1:])})" if len(n.options) > 1 else ""
    src = Path(str(cfg.paths.models)) / "flowportal"
    raise UserError(
        f"missing model file for stage {n.stage}: {n.what} at {n.options[0]}{alt}{more}",
        where="flowportal.models",
        fix=f"put it into the shared model set ({src}, layout {check_layout(cfg)}, docs/flowportal.md) "
        f"and stage it: python -m containers stage {src} {Path(str(cfg.flowportal.models)).parent}",
    )
