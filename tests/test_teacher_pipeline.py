"""Every teacher kind through the pipeline: same audio for the teacher's target and the student's input,
then cache -> distill 1+1 -> eval -> export -> embed + search -> serve's engine, with tiny random teachers
(MS CLAP 2022, 2023, a ClapModel)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import distinct_sound, save_tiny_teacher, write_csv, write_wav
from test_teacher_2023 import make_gpt2_tokenizer
from test_teacher_hf import save_tiny_clap

from tinyclap.audio.io import RESAMPLE_QUALITY
from tinyclap.cli import main
from tinyclap.models.teacher import bundled_tokenizer_dir, load_teacher

KINDS = ["msclap-2022", "msclap-2023", "hf-clap"]
STUDENT = "phinet_alpha_0.50_beta_0.75_t0_4_N_3"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Eight 5 s clips of two classes (a CSV dataset), and one tiny random teacher of each kind."""
    from tinyclap.models.msclap2023 import CLAP2023Teacher, Teacher2023Config, save_teacher_2023

    root = tmp_path_factory.mktemp("teachers")
    (root / "audio").mkdir()
    rows = [(str(write_wav(root / "audio" / f"c{i}.wav", distinct_sound(i, 5.0))), f"class{i % 2}", 1 + i % 2)
            for i in range(8)]
    write_csv(root / "data.csv", ["path", "label", "fold"], rows)
    gpt2 = make_gpt2_tokenizer(root / "gpt2tok")
    torch.manual_seed(0)
    t23 = CLAP2023Teacher(Teacher2023Config.tiny(vocab_size=len(json.loads((gpt2 / "vocab.json").read_text()))))
    (root / "t23").mkdir()
    teachers = {
        "msclap-2022": (str(save_tiny_teacher(root / "t22" / "teacher")), str(bundled_tokenizer_dir())),
        "msclap-2023": (str(save_teacher_2023(t23, root / "t23")), str(gpt2)),
        "hf-clap": (str(save_tiny_clap(root / "hf")), None),
    }
    return {"root": root, "csv": root / "data.csv", "files": [Path(r[0]) for r in rows], "teachers": teachers}


@pytest.mark.parametrize("kind", KINDS)
def test_teacher_target_and_student_input_share_the_audio(work: dict, kind: str) -> None:
    """The cache's target of a crop is the teacher's embedding of that very crop, resampled to its rate (the
    teacher then fills its own window its own way); the student's log-mel is of the same crop at 44.1 kHz."""
    import soxr

    from tinyclap.train.cache import CacheStore, build_cache

    spec, _ = work["teachers"][kind]
    out = work["root"] / f"cache-{kind}"
    build_cache(spec, work["files"][:3], out, workers=0, batch_size=2, progress=False)
    store = CacheStore(out)
    teacher = load_teacher(spec)
    assert store.config["teacher"]["sample_rate"] == teacher.sample_rate
    for i, item in enumerate(store.items):
        wave, rate = sf.read(item["path"], dtype="float32")
        assert rate == 44100 and item["offset"] == 0.0 and len(wave) == 5 * 44100  # the crop is the whole clip
        if teacher.sample_rate != rate:
            wave = soxr.resample(wave, rate, teacher.sample_rate, quality=RESAMPLE_QUALITY).astype(np.float32)
        expected = teacher.embed_waveform(torch.from_numpy(wave)[None])[0].numpy()
        np.testing.assert_allclose(store.target(i), expected, atol=2e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_end_to_end_per_teacher(work: dict, kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    root, (spec, tok) = work["root"] / kind, work["teachers"][kind]
    tok_args = [] if tok is None else ["--tokenizer", tok]
    assert main(["cache", "--teacher", spec, "--data", f"csv:{work['csv']}", "--out", str(root / "cache"),
                 "--workers", "0", "--no-progress"]) == 0
    assert main(["distill", "--student", STUDENT, "--cache", str(root / "cache"), "--out", str(root / "run"),
                 "--epochs1", "1", "--epochs2", "1", "--batch-size", "4", "--workers", "0", "--no-progress"]) == 0
    assert main(["eval", "--model", str(root / "run"), "--dataset", f"csv:{work['csv']}", "--out",
                 str(root / "eval"), "--no-cache", "--no-progress", *tok_args]) == 0
    report = json.loads((root / "eval" / "report.json").read_text())
    template = {"hf-clap": "This is a sound of {}."}.get(kind, "this is the sound of {}")
    assert report["text"]["templates"] == [template]  # the teacher's prompt style
    assert main(["export", "--model", str(root / "run"), "--out", str(root / "export"), "--labels", "dog,rain",
                 "--parity-audio", str(work["root"] / "audio"), *tok_args]) == 0
    assert (root / "export" / "manifest.json").is_file()
    assert main(["embed", "--model", str(root / "run"), "--out", str(root / "index"), str(work["root"] / "audio"),
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["search", str(root / "index"), "a dog", "--json", *tok_args]) == 0  # text via the recorded teacher
    assert json.loads(capsys.readouterr().out)
    # serve: the page's engine classifies free-text labels and searches the index through the same teacher
    from tinyclap.serve.limits import ServeConfig
    from tinyclap.serve.server import build_engine

    engine = build_engine(ServeConfig(), model=str(root / "run"), tokenizer=tok, index=str(root / "index"))
    labels = engine.classify(work["files"][0], ["dog", "rain"])["labels"]
    assert {r["label"] for r in labels} == {"dog", "rain"} and engine.search_text("a dog", 2)


def test_info_teachers_lists_every_kind(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--teachers", "--json"]) == 0
    rows = {r["kind"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(KINDS)
    assert (rows["msclap-2023"]["sample_rate"], rows["msclap-2023"]["window_s"]) == (44100, 7.0)
    assert (rows["hf-clap"]["sample_rate"], rows["hf-clap"]["window_s"]) == (48000, 10.0)
    assert all(r["audio_params"] > 10**7 and r["text_params"] > 10**8 for r in rows.values())
