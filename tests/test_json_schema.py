"""One JSON schema (docs/json.md): every `--json` output of classify, the runtime and search, and every answer
of `tinyclap serve`'s routes (errors included), validated against the package's JSON Schema files (draft
2020-12, `tinyclap.schemas`), plus what a schema cannot say: lists in label order, the same document from
the CLI and the runtime, the same hit fields from the CLI and the server, no server-side path in any answer."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from helpers import distinct_sound, index_three_clips, small_export, tone, write_wav

from tinyclap import schemas
from tinyclap.cli import main
from tinyclap.runtime import main as runtime_main

ROOT = Path(__file__).resolve().parents[1]
NAME = "phinet_alpha_0.75_beta_0.75_t0_4_N_4"
LABELS = ["dog", "rain", "siren"]


@pytest.fixture(scope="module")
def export_dir(work: Path, us8k_root: Path) -> Path:
    return small_export(work / "export", us8k_root, NAME, LABELS, 64)


@pytest.fixture(scope="module")
def audio(work: Path) -> dict[str, Path]:
    """A short clip, a 12 s one (a timeline of several windows) and a file that is not audio."""
    folder = work / "audio"
    folder.mkdir()
    out = {"short": write_wav(folder / "short.wav", distinct_sound(0, 2.0, 22050), 22050),
           "long": write_wav(folder / "long.wav", tone(12.0, 22050), 22050),
           "bad": folder / "bad.wav"}
    out["bad"].write_text("not audio")
    return out


@pytest.fixture(scope="module")
def index(work: Path, export_dir: Path) -> Path:
    return index_three_clips(work, export_dir)


def printed(capsys: pytest.CaptureFixture[str], argv: list[str], run: Any = main, rc: int = 0) -> dict[str, Any]:
    """The JSON document a command prints (validated against the schema its `schema` field names)."""
    assert run(argv) == rc
    doc = json.loads(capsys.readouterr().out, parse_constant=_refuse)  # strict JSON: no NaN or Infinity
    schemas.validate(doc)
    return doc


def _refuse(name: str) -> None:
    raise AssertionError(f"{name} in a JSON document")


def check_classify(doc: dict[str, Any], top: int) -> None:
    """What the schema cannot say: ranked best first, lists in the timeline's label order, top_label the argmax."""
    for res in doc["results"]:
        probs = [x["probability"] for x in res["labels"]]
        assert 0 < len(probs) <= top and probs == sorted(probs, reverse=True)
        tl = res.get("timeline")
        if tl is None:
            continue
        assert tl["rows"] and {x["label"] for x in res["labels"]} <= set(tl["labels"])
        for row in tl["rows"]:
            assert len(row["probabilities"]) == len(row["cosines"]) == len(tl["labels"])
            assert row["top_label"] == tl["labels"][int(np.argmax(row["probabilities"]))]
            assert abs(sum(row["probabilities"]) - 1) < 1e-3 and row["start"] < row["end"]
        mean = np.mean([r["probabilities"] for r in tl["rows"]], axis=0)
        assert res["labels"][0]["label"] == tl["labels"][int(np.argmax(mean))]  # ranked by mean probability


def test_schema_files() -> None:
    """Each kind has a valid draft 2020-12 schema naming its kind and version; docs/json.md names every field."""
    doc = (ROOT / "docs" / "json.md").read_text()
    names = {p.name.removesuffix(".schema.json") for p in (ROOT / "src/tinyclap/schemas").glob("*.schema.json")}
    assert names == set(schemas.KINDS) | set(schemas.OUTPUTS)  # the outputs: tests/test_json_outputs.py
    for kind in schemas.KINDS:
        schema = schemas.load_schema(kind)
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"] == f"urn:tinyclap:schema:{kind}:{schemas.VERSION}"
        if "schema" in schema["properties"]:
            assert schema["properties"]["schema"] == {"const": f"tinyclap.{kind}"}
            assert schema["properties"]["version"] == {"const": schemas.VERSION}
        missing = sorted({f for f in _field_names(schema) if f"`{f}`" not in doc})
        assert not missing, f"docs/json.md does not name these {kind} fields: {missing}"
        assert f"{kind}.schema.json" in doc


def _field_names(schema: Any) -> Iterator[str]:
    if isinstance(schema, dict):
        yield from schema.get("properties", {})
        for v in schema.values():
            yield from _field_names(v)
    elif isinstance(schema, list):
        for v in schema:
            yield from _field_names(v)


def test_classify_cli_and_runtime(export_dir: Path, audio: dict[str, Path], capsys: pytest.CaptureFixture[str]
                                  ) -> None:
    files = [str(audio["short"]), str(audio["long"]), str(audio["bad"])]
    doc = printed(capsys, ["classify", *files, "--export-dir", str(export_dir), "--json", "--top", "2"])
    check_classify(doc, 2)
    assert [r["file"] for r in doc["results"]] == files[:2] and doc["failed"][0]["file"] == files[2]
    assert all("timeline" not in r for r in doc["results"])
    same = printed(capsys, [str(export_dir), *files, "--json", "--top", "2"], runtime_main)
    assert same == doc  # the runtime prints the same document


def test_timelines_cli_and_runtime(export_dir: Path, audio: dict[str, Path], capsys: pytest.CaptureFixture[str]
                                   ) -> None:
    files = [str(audio["long"]), str(audio["bad"])]
    argv = [*files, "--window", "5", "--hop", "2", "--json"]
    doc = printed(capsys, ["classify", *argv, "--export-dir", str(export_dir)])
    check_classify(doc, 5)
    tl = doc["results"][0]["timeline"]
    assert (tl["window"], tl["hop"], tl["labels"], len(tl["rows"])) == (5.0, 2.0, LABELS, 5)
    assert "segments" not in tl and doc["failed"][0]["file"] == files[1]
    assert printed(capsys, [str(export_dir), *argv], runtime_main) == doc
    seg = printed(capsys, ["classify", *argv, "--export-dir", str(export_dir), "--segments", "--threshold", "0.5"])
    check_classify(seg, 5)
    segments = seg["results"][0]["timeline"]["segments"]
    assert segments and sum(s["windows"] for s in segments) == len(tl["rows"])
    assert all(s["peak_probability"] >= s["mean_probability"] for s in segments)


def test_search_cli(index: Path, teacher_ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tinyclap.models.teacher import bundled_tokenizer_dir

    text = printed(capsys, ["search", str(index), "a", "dog", "--teacher", str(teacher_ckpt), "--tokenizer",
                            str(bundled_tokenizer_dir()), "--json", "-k", "2"])
    assert text["query"] == {"text": "a dog"} and text["index"] == str(index) and text["windows"] > 0
    like_file = index.parent / "source" / "clip1.wav"
    like = printed(capsys, ["search", str(index), "--like", str(like_file), "--json", "-k", "3"])
    assert like["query"] == {"like": str(like_file)}
    for doc in (text, like):
        cos = [h["cosine"] for h in doc["hits"]]
        assert doc["hits"] and cos == sorted(cos, reverse=True)
        for h in doc["hits"]:
            assert h["name"] == os.path.basename(h["path"]) and "audio_url" not in h


# ------------------------------------------------------------------------------------------------ the server


@pytest.fixture(scope="module")
def client(work: Path, export_dir: Path, index: Path, teacher_ckpt: Path) -> Iterator[Any]:
    """The app over the export, the tiny teacher for free-text labels and text search, and the index."""
    from fastapi.testclient import TestClient

    from tinyclap.models.teacher import bundled_tokenizer_dir
    from tinyclap.serve.app import create_app
    from tinyclap.serve.limits import MB, ServeConfig
    from tinyclap.serve.server import build_engine

    cfg = ServeConfig(max_upload_bytes=4 * MB, max_seconds=60.0, workers=1, queue=2)
    engine = build_engine(cfg, export_dir=str(export_dir), teacher=str(teacher_ckpt),
                          tokenizer=str(bundled_tokenizer_dir()), index=str(index))
    engine.measure_latency(runs=1, warmup=0)
    (work / "tmp").mkdir()
    with TestClient(create_app(engine, cfg, temp_root=work / "tmp"), base_url="http://127.0.0.1") as c:
        yield c


def answer(r: Any, kind: str, work: Path, status: int = 200) -> dict[str, Any]:
    """A route's JSON answer, validated against `kind`'s schema; never a server-side path in it (the export,
    the index, the indexed audio and the upload folders all lie under the test's work folder)."""
    assert r.status_code == status, r.text
    doc = r.json()
    schemas.validate(doc, kind)
    assert str(work) not in r.text and str(ROOT) not in r.text, r.text[:300]
    return doc


def upload(client: Any, route: str, path: Path, **fields: str) -> Any:
    return client.post(route, files={"audio": (path.name, path.read_bytes(), "audio/wav")}, data=fields)


def test_api_answers(client: Any, audio: dict[str, Path], index: Path, work: Path,
                     capsys: pytest.CaptureFixture[str]) -> None:
    health = answer(client.get("/healthz"), "health", work)
    assert health["status"] == "ok"
    info = answer(client.get("/api/info"), "info", work)
    assert info["search"] is True and info["free_text_labels"] is True and info["index"]["text_search"] is True
    short = answer(upload(client, "/api/classify", audio["short"]), "classify", work)
    check_classify(short, 10)
    (res,) = short["results"]
    assert res["file"] == "short.wav" and "timeline" not in res and short["failed"] == []
    assert res["format"] == "WAV" and res["bytes"] == audio["short"].stat().st_size and res["duration"] == 2.0
    long = answer(upload(client, "/api/classify", audio["long"], labels="a siren, rain", top="1"), "classify", work)
    check_classify(long, 1)
    assert long["results"][0]["timeline"]["labels"] == ["a siren", "rain"]
    text = answer(client.get("/api/search", params={"q": "a dog", "k": "2"}), "search", work)
    like = answer(upload(client, "/api/search", index.parent / "source" / "clip1.wav", k="3"), "search", work)
    assert text["query"] == {"text": "a dog"} and like["query"] == {"like": "clip1.wav"}
    # the same hit fields as the CLI's, a name and an id where the CLI has the path
    assert main(["search", str(index), "--like", str(index.parent / "source" / "clip1.wav"), "--json", "-k", "3"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert like["hits"] and all(h["name"] != "clip1.wav" for h in like["hits"])  # an upload of an indexed file
    for api_hit, cli_hit in zip(like["hits"], cli["hits"]):
        assert api_hit["audio_url"] == f"/api/audio/{api_hit['file_id']}" and "path" not in api_hit
        assert api_hit.keys() - {"audio_url"} == cli_hit.keys() - {"path"}
        assert (api_hit["name"], api_hit["file_id"]) == (cli_hit["name"], cli_hit["file_id"])
        played = client.get(api_hit["audio_url"])
        assert played.status_code == 200 and played.headers["content-type"] == "audio/wav"


def test_api_errors(client: Any, audio: dict[str, Path], work: Path) -> None:
    """Every refusal is the error document."""
    cases = [
        (client.get("/nope"), 404),
        (client.get("/api/classify"), 405),
        (client.post("/api/classify", content=b"x", headers={"content-type": "audio/wav"}), 415),
        (client.post("/api/classify", data={"labels": "a"}, files={"x": ("a", b"b")}), 400),
        (upload(client, "/api/classify", audio["bad"]), 415),
        (upload(client, "/api/classify", audio["short"], top="0"), 400),
        (client.get("/api/search", params={"q": ""}), 400),
        (client.get("/api/audio/abc"), 404),
        (client.get("/api/audio/999999"), 404),
    ]
    for r, status in cases:
        err = answer(r, "error", work, status)
        assert err["status"] == status


# ------------------------------------------------------------------------------------------------ the builders


class _Hit:
    def __init__(self, path: str, label: str | None = None) -> None:
        self.file_id, self.path, self.start, self.end, self.score, self.label = 7, path, 1.0, 6.0, 1.00002, label


def test_builders_and_refusals() -> None:
    """A label when the source had one; a file name that is not UTF-8 still gives valid UTF-8 JSON from the
    server; the old dialects, NaN and out-of-range numbers are refused."""
    odd = os.fsdecode(b"/data/caf\xe9.wav")  # a Latin-1 name: a lone surrogate in Python
    api = schemas.search_document({"text": "x"}, [schemas.hit(_Hit(odd, "dog"), audio_url=True)])
    schemas.validate(api)
    json.dumps(api, ensure_ascii=False).encode("utf-8")  # what the server sends: no lone surrogate
    assert api["hits"][0]["label"] == "dog" and api["hits"][0]["name"] == "caf\ufffd.wav"
    cli = schemas.search_document({"like": "q.wav"}, [schemas.hit(_Hit("/a/b.wav"), path=True)], windows=3)
    schemas.validate(cli)
    assert "label" not in cli["hits"][0] and cli["hits"][0]["path"] == "/a/b.wav"
    good = schemas.classify_document([schemas.result("a.wav", schemas.ranked([("dog", 0.7), ("cat", 0.3)]))])
    schemas.validate(good)
    old = {"results": [{"file": "a.wav", "labels": [{"label": "dog", "score": 0.7}]}], "failed": []}
    bad_docs = [
        {**good, "results": old["results"]},  # the old name of a probability
        {**good, "version": 2},
        {**good, "results": [schemas.result("a.wav", [{"label": "dog", "probability": 1.5}])]},
        {**cli, "hits": [{**cli["hits"][0], "score": 0.5}]},
        {**cli, "query": {"text": "a", "like": "b"}},
    ]
    for doc in bad_docs:
        with pytest.raises(jsonschema.ValidationError):
            schemas.validate(doc)
    with pytest.raises(ValueError, match="NaN"):  # strict JSON: a schema's bounds let NaN through
        schemas.validate({**good, "results": [schemas.result("a.wav", [{"label": "dog", "probability": np.nan}])]})
    with pytest.raises(ValueError, match="non-finite"):  # and the builders never write one
        schemas.ranked([("dog", np.inf)])
    with pytest.raises(ValueError, match="not a tinyclap JSON document"):
        schemas.validate(old)
    with pytest.raises(ValueError, match="unknown JSON document kind"):
        schemas.load_schema("nope")


def test_schemas_import_no_torch() -> None:
    from helpers import run_python

    res = run_python("import sys, tinyclap.schemas; assert 'torch' not in sys.modules; print('ok')")
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr
