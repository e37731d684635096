"""Composition of every cluster x image, and the one-line errors for bad overrides."""

from __future__ import annotations

import pytest

from containers import CONF_DIR
from suite_core.config import compose, groups
from suite_core.errors import UserError

CLUSTERS = groups(CONF_DIR)["cluster"]
IMAGES = groups(CONF_DIR)["image"]


def test_the_tree_has_the_expected_profiles():
    assert {"torch", "dgx_spark", "laptop"} <= set(CLUSTERS)
    assert {"paddle-py312", "mineru-dell-py310", "flowportal-cu130"} <= set(IMAGES)


@pytest.mark.parametrize("cluster", CLUSTERS)
@pytest.mark.parametrize("image", IMAGES)
def test_every_cluster_and_image_composes_and_resolves(cluster, image):
    cfg = compose([f"cluster={cluster}", f"image={image}"])
    assert cfg.cluster.name == cluster
    assert cfg.image.name == image
    assert cfg.image.recipe.startswith("recipes/") and cfg.image.arches
    assert cfg.cluster.compute_arch in ("amd64", "arm64")
    for key in ("hf", "torch", "triton", "inductor", "paddlex"):
        assert str(cfg.paths.caches[key]).startswith(str(cfg.paths.node_local))


def test_torch_profile_facts():
    cfg = compose(["cluster=torch"])
    parts = cfg.cluster.partitions
    assert cfg.cluster.account == "torch_pr_609_general"
    assert (parts.l40s.name, parts.l40s.gres_type) == ("l40s_public", "l40s")
    assert (parts.h200.name, parts.h200.gres_type) == ("h200_public", "h200")
    assert parts.cpu.gpu is False


def test_dgx_spark_profile_facts():
    cfg = compose(["cluster=dgx_spark"])
    assert (cfg.cluster.login_arch, cfg.cluster.compute_arch) == ("amd64", "arm64")
    assert cfg.cluster.partitions.gb10.name == "spark"
    assert cfg.cluster.partitions.gb10.gres_type is None
    assert cfg.cluster.shared_fs == "smb"


def test_roots_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CONTAINERS_NODE_LOCAL", str(tmp_path / "nvme"))
    cfg = compose(["cluster=dgx_spark"])
    assert cfg.paths.caches.hf == str(tmp_path / "nvme" / "cache" / "hf")


def test_cluster_can_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("CONTAINERS_CLUSTER", "torch")
    assert compose([]).cluster.name == "torch"
    assert compose(["cluster=laptop"]).cluster.name == "laptop"


@pytest.mark.parametrize(("override", "needle"), [
    ("cluster=nope", "unknown cluster 'nope'"),
    ("image=nope", "unknown image 'nope'"),
    ("cluster=", "has no value"),
    ("a=[", "malformed override 'a=['"),
    ("no_such_key=1", "no_such_key"),
])
def test_bad_overrides_are_one_line_user_errors(override, needle):
    with pytest.raises(UserError) as err:
        compose([override])
    assert needle in err.value.line()
    assert "\n" not in err.value.line()


def test_unknown_option_lists_the_choices():
    with pytest.raises(UserError) as err:
        compose(["cluster=nope"])
    assert "dgx_spark, laptop, torch" in err.value.line()


def test_mandatory_value_left_unset(tmp_path):
    (tmp_path / "config.yaml").write_text("account: ???\n")
    with pytest.raises(UserError) as err:
        compose([], config_dir=tmp_path)
    assert "'account' is mandatory" in err.value.line()


def test_job_folder_config_round_trips(tmp_path):
    from suite_core.config import to_yaml

    cfg = compose(["cluster=torch", "image=flowportal-cu130"])
    (tmp_path / "config.yaml").write_text(to_yaml(cfg))
    again = compose([], config_dir=tmp_path)
    assert again == cfg


def test_job_folder_config_reads_overrides_without_hydra(tmp_path):
    """A job's config.yaml is already composed: overrides apply through OmegaConf alone."""
    import subprocess
    import sys

    from suite_core.config import to_yaml

    (tmp_path / "config.yaml").write_text(to_yaml(compose(["cluster=torch", "app=doctor"])))
    cfg = compose(["report_path=/r/x.json", "++array_item=video a.mp4", "require=[gpu,onnx]",
                   "~device_fallback", "paths.models=/m"], config_dir=tmp_path)
    assert (cfg.report_path, cfg.array_item) == ("/r/x.json", "video a.mp4")
    assert list(cfg.require) == ["gpu", "onnx"]
    assert "device_fallback" not in cfg and cfg.paths.models == "/m"
    with pytest.raises(UserError, match="malformed override 'a=\\['"):
        compose(["a=["], config_dir=tmp_path)
    probe = ("import sys; from suite_core.config import compose; compose([], config_dir=sys.argv[1]); "
             "print('hydra' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.strip() == "False", out.stderr
