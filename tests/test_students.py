"""Students: exact parameter counts, parity of our PhiNet with micromind 0.2.1, strict names, shapes, MACs."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
import types
from types import ModuleType

import pytest
import torch
from torch import nn

from tinyclap.models.phinet import PhiNet
from tinyclap.models.students import (
    PhiNetAudioEncoder,
    StudentSpec,
    TinyCLAPStudent,
    count_macs,
    count_params,
    create_student,
    list_students,
    parse_student_name,
)

# From the reference code (fpaissan/tinyCLAP + micromind 0.2.1): student = PhiNet/Cnn14 base + projection.
EXPECTED_PARAMS = {
    "phinet_alpha_3.00_beta_0.75_t0_6_N_7": 7_035_849,
    "phinet_alpha_3.00_beta_0.75_t0_6_N_9": 13_350_236,
    "phinet_alpha_3.00_beta_0.75_t0_4_N_7": 6_139_217,
    "phinet_alpha_1.50_beta_0.75_t0_6_N_7": 4_434_547,
    "phinet_alpha_0.75_beta_0.75_t0_4_N_7": 3_567_435,
    "phinet_alpha_0.75_beta_0.75_t0_4_N_4": 3_244_529,
    "phinet_alpha_0.75_beta_0.75_t0_6_N_4": 3_254_247,
    "cnn14": 83_901_391,
}
SMALL = "phinet_alpha_0.75_beta_0.75_t0_4_N_4"


@pytest.fixture(scope="module")
def mm() -> ModuleType:
    """micromind 0.2.1's phinet.py, loaded by path: `import micromind` fails beside CPU torch, and the file
    imports torchinfo (only for get_complexity), which we stub for the duration of the import."""
    path = importlib.metadata.distribution("micromind").locate_file("micromind/networks/phinet.py")
    stubbed = "torchinfo" not in sys.modules
    if stubbed:
        sys.modules["torchinfo"] = types.SimpleNamespace(summary=None)  # type: ignore[assignment]
    try:
        spec = importlib.util.spec_from_file_location("_micromind_phinet_ref", str(path))
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        if stubbed:
            del sys.modules["torchinfo"]
    return mod


def _ref_encoder(mm: ModuleType, spec: StudentSpec) -> nn.Module:
    """The reference tinyCLAP student encoder (fpaissan/tinyCLAP modules.py: its PhiNet subclass, built by
    get_audio_encoder with floats parsed from the name): micromind PhiNet + bn0 + pn_block + mean."""

    class RefEncoder(mm.PhiNet):
        def __init__(self) -> None:
            super().__init__(
                input_shape=(1, 640, 64), compatibility=True, alpha=float(spec.alpha), beta=float(spec.beta),
                t_zero=float(spec.t0), num_layers=float(spec.N),
            )
            self.bn0 = nn.BatchNorm2d(64)
            self.pn_block = nn.Conv2d(self._layers[-1]._layers[-2].weight.shape[0], 2048, kernel_size=1, stride=2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.bn0(x[:, None].transpose(1, 3)).transpose(1, 3)
            return self.pn_block(super().forward(x)).mean((-1, -2))

    return RefEncoder()


def _randomize(model: nn.Module, seed: int) -> None:
    """Random BN affine parameters and running statistics, so that a wrong BN mapping cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(1 + 0.5 * torch.rand(m.running_var.shape, generator=g))


def _check_parity(src: nn.Module, dst: nn.Module, x: torch.Tensor) -> None:
    """Copy src's weights into dst, then: same eval outputs, and same outputs and BN running stats after
    one train-mode pass (same seed, so the Dropout2d masks agree)."""
    src_sd, dst_sd = src.state_dict(), dst.state_dict()
    assert list(src_sd) == list(dst_sd)
    assert all(src_sd[k].shape == dst_sd[k].shape for k in src_sd)
    _randomize(src, seed=1)
    dst.load_state_dict(src.state_dict(), strict=True)
    src.eval()
    dst.eval()
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x), rtol=0, atol=1e-6)
    src.train()
    dst.train()
    outs = []
    for m in (src, dst):
        torch.manual_seed(123)
        with torch.no_grad():
            outs.append(m(x))
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-6)
    for k, v in src.state_dict().items():
        torch.testing.assert_close(dst.state_dict()[k], v, rtol=0, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("name", list(EXPECTED_PARAMS))
def test_param_counts_match_reference(name: str) -> None:
    assert count_params(create_student(name)) == EXPECTED_PARAMS[name]


def test_registry_lists_the_paper_students() -> None:
    assert list_students() == list(EXPECTED_PARAMS)


@pytest.mark.parametrize(
    "name",
    [
        "phinet_alpha_0.75_beta_0.75_t0_4_N_4",
        "phinet_alpha_1.50_beta_0.75_t0_6_N_7",
        "phinet_alpha_3.00_beta_0.75_t0_6_N_9",
    ],
)
def test_phinet_student_encoder_matches_reference_both_ways(mm: ModuleType, name: str) -> None:
    spec = parse_student_name(name)
    x = torch.randn(2, 96, 64, generator=torch.Generator().manual_seed(0))  # (B, T, mels): 96/64 -> 2x1 at the end
    torch.manual_seed(0)
    _check_parity(_ref_encoder(mm, spec), PhiNetAudioEncoder(spec), x)  # micromind -> ours
    torch.manual_seed(1)
    _check_parity(PhiNetAudioEncoder(spec), _ref_encoder(mm, spec), x)  # ours -> micromind


@pytest.mark.parametrize("odd", [False, True])
def test_phinet_backbone_options_match_micromind(mm: ModuleType, odd: bool) -> None:
    """Options tinyCLAP does not use (Hardswish, squeeze-excite, pooling, 5x5 kernels, head, odd-size padding)."""
    kw = dict(
        input_shape=(3, 33, 31) if odd else (3, 64, 64), num_layers=6, alpha=0.5, beta=0.5, t_zero=5,
        include_top=True, num_classes=7, conv5_percent=0.4, pool=odd, downsampling_layers=[5, 6],
        divisor=4 if odd else 1,
    )
    x = torch.randn(2, 3, 33, 31) if odd else torch.randn(2, 3, 64, 64)
    _check_parity(mm.PhiNet(**kw), PhiNet(**kw), x)
    _check_parity(PhiNet(**kw), mm.PhiNet(**kw), x)


def test_student_state_dict_keys_are_the_references() -> None:
    prefixes = {k.split(".")[0] + "." + k.split(".")[1] for k in create_student(SMALL).state_dict()}
    assert prefixes == {"base._layers", "base.bn0", "base.pn_block", "projection.linear1", "projection.linear2",
                        "projection.layer_norm"}
    assert "base.pn_block.bias" in create_student(SMALL).state_dict()


def test_output_shape_and_input_check() -> None:
    torch.manual_seed(0)
    m = create_student(SMALL).eval()
    with torch.no_grad():
        out = m(torch.randn(3, 690, 64))  # a 5 s clip
    assert out.shape == (3, 1024) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match=r"\(B, T, 64\)"):
        m(torch.randn(3, 690, 40))
    with pytest.raises(ValueError, match=r"\(B, T, 64\)"):
        m(torch.randn(3, 1, 690, 64))


def test_embed_dim_changes_only_the_projection() -> None:
    full, small = create_student(SMALL), create_student(SMALL, embed_dim=256)
    f_sd, s_sd = full.state_dict(), small.state_dict()
    assert list(f_sd) == list(s_sd)
    for k in f_sd:
        if k.startswith("base."):
            assert f_sd[k].shape == s_sd[k].shape, k
    assert s_sd["projection.linear1.weight"].shape == (256, 2048)
    assert s_sd["projection.linear2.weight"].shape == (256, 256)
    assert s_sd["projection.layer_norm.weight"].shape == (256,)
    assert count_params(full) - count_params(small) == (2048 + 1024 + 2) * 1024 - (2048 + 256 + 2) * 256
    with torch.no_grad():
        assert small.eval()(torch.randn(2, 64, 64)).shape == (2, 256)
    rebuilt = TinyCLAPStudent(**small.config())
    assert small.config() == {"name": SMALL, "embed_dim": 256, "n_mels": 64}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in s_sd.items()}
    assert small.name == SMALL and small.embed_dim == 256


def test_cnn14_student_structure() -> None:
    m = create_student("cnn14")
    assert m.name == "cnn14" and m.spec is None and m.config()["name"] == "cnn14"
    assert {k.split(".")[0] for k in m.state_dict()} == {"base", "projection"}
    assert m.state_dict()["projection.linear1.weight"].shape == (1024, 2048)


def test_parse_valid_names() -> None:
    assert parse_student_name("phinet_alpha_1.50_beta_0.75_t0_6_N_7") == StudentSpec(1.5, 0.75, 6, 7)
    # unregistered but well-formed names are allowed
    spec = parse_student_name("phinet_alpha_0.50_beta_1.00_t0_3_N_5")
    assert spec == StudentSpec(0.5, 1.0, 3, 5) and spec.name == "phinet_alpha_0.50_beta_1.00_t0_3_N_5"
    assert create_student(spec.name).spec == spec


@pytest.mark.parametrize(
    "bad",
    [
        "phinet_alpha_1.5_beta_0.75_t0_6_N_7",  # one decimal
        "phinet_alpha_1.500_beta_0.75_t0_6_N_7",
        "phinet_alpha_01.50_beta_0.75_t0_6_N_7",  # not canonical
        "phinet_alpha_1.50_beta_0.75_t0_06_N_7",
        "phinet_alpha_1.50_beta_0.75_t0_6.0_N_7",
        "phinet_alpha_1.50_beta_0.75_t0_6_N_7 ",
        "PhiNet_alpha_1.50_beta_0.75_t0_6_N_7",
        "phinet_beta_0.75_alpha_1.50_t0_6_N_7",
        "phinet_alpha_1.50_beta_0.75_t0_6",
        "phinet_alpha_0.00_beta_0.75_t0_6_N_7",  # out of range
        "phinet_alpha_1.50_beta_0.75_t0_0_N_7",
        "phinet_alpha_1.50_beta_0.75_t0_6_N_2",
        "cnn14",  # a student, but not a PhiNet
        "resnet18",
        "",
    ],
)
def test_bad_names_are_refused_with_the_valid_form(bad: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_student_name(bad)
    msg = str(err.value)
    assert "phinet_alpha_{alpha:.2f}_beta_{beta:.2f}_t0_{t0}_N_{N}" in msg
    assert all(n in msg for n in list_students())
    if bad != "cnn14":
        with pytest.raises(ValueError, match="Registered students"):
            create_student(bad)


def test_count_macs_counts_convs_and_linears() -> None:
    class Tiny(nn.Module):
        n_mels = 8

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.dw = nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4)
            self.bn = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # (1, T, 8)
            x = self.bn(self.dw(self.conv(x[:, None])))  # (1, 4, T/2, 4)
            return self.fc(x.mean((-1, -2)))

    m = Tiny().train()
    assert count_macs(m, n_frames=10) == 10 * 8 * 4 * 9 + 5 * 4 * 4 * 9 + 4 * 5
    assert m.training  # mode restored
    s = create_student(SMALL)
    assert count_macs(s) == count_macs(s.base) + 2048 * 1024 + 1024 * 1024
    assert count_macs(s, n_frames=1380) > count_macs(s)


def test_student_encode_normalize_is_explicit() -> None:
    """The bare student returns unnormalised projections; encode(normalize=True) and the embedder normalise."""
    import torch.nn.functional as F

    from tinyclap.models import StudentEmbedder

    torch.manual_seed(0)
    student = create_student("phinet_alpha_0.75_beta_0.75_t0_4_N_4", embed_dim=16).eval()
    logmel = torch.randn(2, 100, 64)
    with torch.no_grad():
        raw = student(logmel)
        assert torch.equal(student.encode(logmel), raw)
        assert torch.equal(student.encode(logmel, normalize=True), F.normalize(raw, dim=-1))
        emb = StudentEmbedder(student)
        assert torch.equal(emb.encode_audio(logmel, normalize=False), raw)
        wave = torch.randn(2, 44100)
        assert torch.equal(emb(wave), emb.embed_waveform(wave))
        raw_wave = emb.embed_waveform(wave, normalize=False)
        torch.testing.assert_close(emb.embed_waveform(wave), F.normalize(raw_wave, dim=-1))
