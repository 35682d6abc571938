"""The embedder's backends other than float32 torch, on the real embedded MiniLM: their
vectors against sentence-transformers' float32 ones on real scene texts (the import
fixtures), the ONNX export cache (reused; a damaged or half-written one exported again),
the setting and "auto", a model the export does not cover, and a scene collection made
by one backend opened with another (re-embedded once) or by another model (refused)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES

# Measured on these texts: ONNX float32 matches torch to ~1e-7; bfloat16 to 0.9999; int8
# averages 0.997, its worst text ("ok", one word) 0.985 (Falstaff's scenes: 0.997 / 0.993).
FLOORS = {"onnx": (0.9999, 0.9999), "torch-bf16": (0.999, 0.9995), "onnx-int8": (0.97, 0.99)}  # (worst, mean)


def fixture_scene_texts() -> list[str]:
    from memory.errors import MemoryUserError
    from memory.importers import detect_format, open_source
    from memory.scenes import cut_scenes

    texts = []
    for path in sorted((FIXTURES / "import").iterdir()):
        if path.suffix == ".py":
            continue
        try:
            kind = detect_format(path)
            _, utterances = open_source(path, kind)
            texts += [s.text for s in cut_scenes(utterances, source=path.name, kind=kind, me_names=set())]
        except MemoryUserError:
            continue  # the deliberately broken fixtures
    return texts


@pytest.fixture(scope="module")
def texts():
    out = fixture_scene_texts()
    assert len(out) >= 30
    return out + ["ok", "   padded   ", "word " * 400]  # a one-token text, stripping, truncation at 256


@pytest.fixture(scope="module")
def torch_vectors(texts):
    from memory.embedder import Embedder

    return Embedder(backend="torch").encode(texts)


@pytest.mark.parametrize("backend", ["onnx", "torch-bf16", "onnx-int8"])
def test_vectors_agree_with_torch_float32(backend, texts, torch_vectors):
    from memory.embedder import Embedder

    embedder = Embedder(backend=backend)
    vectors = embedder.encode(texts)
    assert embedder.backend == backend and vectors.shape == torch_vectors.shape == (len(texts), 384)
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosine = (vectors * torch_vectors).sum(axis=1)
    worst, mean = FLOORS[backend]
    assert cosine.min() >= worst and cosine.mean() >= mean, (cosine.min(), cosine.mean())
    # A text alone gets the vector it gets among others (neither padding nor, for int8,
    # its neighbours' activations leak into it).
    alone = np.stack([embedder.encode_one(t) for t in texts[:5]])
    assert (alone * vectors[:5]).sum(axis=1).min() >= (0.9999 if backend != "torch-bf16" else 0.999)
    assert embedder.dimension == 384 and embedder.max_tokens == 256
    assert embedder.encode([]).shape == (0, 384)


@pytest.mark.slow
def test_export_cache_is_reused_and_a_damaged_one_exported_again(tmp_path, caplog):
    from memory.embedder import Embedder, embedded_model_dir
    from memory.onnxembed import INT8_FILE, MARKER_FILE, exported_model, is_complete

    cache = tmp_path / "onnx"
    caplog.set_level("INFO", logger="memory.onnxembed")
    folder = exported_model(embedded_model_dir(), cache)
    assert "exporting embedder" in caplog.text and is_complete(folder)
    assert [p.name for p in cache.iterdir()] == [folder.name]  # no temporary folder left behind
    marker = (folder / MARKER_FILE).stat()

    caplog.clear()
    assert exported_model(embedded_model_dir(), cache) == folder  # reused, not exported again
    assert "exporting" not in caplog.text and (folder / MARKER_FILE).stat().st_mtime_ns == marker.st_mtime_ns

    # Half-written: a folder without its marker (as a crash before the rename would leave
    # it, were it not built under a temporary name) is never taken for an export.
    half = cache / "half"
    shutil.copytree(folder, half)
    (half / MARKER_FILE).unlink()
    assert not is_complete(half)

    # Damaged: a truncated model file no longer matches its marker, and is exported again.
    good = (folder / INT8_FILE).read_bytes()
    (folder / INT8_FILE).write_bytes(good[: len(good) // 2])
    assert not is_complete(folder)
    caplog.clear()
    embedder = Embedder(backend="onnx-int8", cache_dir=cache)
    vector = embedder.encode_one("the sea in the morning")
    assert "damaged" in caplog.text and "exporting embedder" in caplog.text
    assert is_complete(folder) and len((folder / INT8_FILE).read_bytes()) == len(good)
    reference = Embedder(backend="onnx-int8").encode_one("the sea in the morning")
    assert float(vector @ reference) > 0.9999


def test_unknown_backend_is_a_clear_error(home):
    from memory.embedder import Embedder, EmbedderBackendError
    from webapp.errors import SettingsError
    from webapp.settings import load_settings

    with pytest.raises(EmbedderBackendError, match="memory.embedder_backend.*'auto', 'torch-bf16', 'onnx-int8', 'onnx', 'torch'"):
        Embedder(backend="onnx-fp16")
    with pytest.raises((SettingsError, EmbedderBackendError), match="Unknown embedder backend 'tensorrt'"):
        load_settings(env={"ALTEREGO_HOME": str(home), "ALTEREGO_MEMORY_EMBEDDER_BACKEND": "tensorrt"})
    assert load_settings(env={"ALTEREGO_HOME": str(home)}).memory.embedder_backend == "auto"


def test_auto_is_bf16_only_where_the_cpu_multiplies_it():
    from memory.embedder import Embedder, cpu_has_bf16
    from memory.onnxembed import EXPORT_VERSION

    embedder = Embedder()
    assert embedder.requested_backend == "auto"
    assert embedder.backend == ("torch-bf16" if cpu_has_bf16() else "onnx-int8")
    assert embedder.identity["embedder_backend"] == ("torch" if cpu_has_bf16() else f"onnx-int8-v{EXPORT_VERSION}")


def test_a_model_onnx_cannot_run_falls_back_to_torch(tmp_path):
    from memory.embedder import Embedder, embedded_model_dir

    model = tmp_path / "with-dense"
    model.mkdir()
    for item in embedded_model_dir().iterdir():
        (model / item.name).symlink_to(item)
    (model / "modules.json").unlink()
    modules = json.loads((embedded_model_dir() / "modules.json").read_text())
    modules.append({"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"})
    (model / "modules.json").write_text(json.dumps(modules))
    embedder = Embedder(str(model), backend="onnx-int8")
    assert embedder.requested_backend == "onnx-int8" and embedder.backend == "torch"
    assert embedder.identity["embedder_backend"] == "torch"


def test_a_collection_follows_the_backend_and_refuses_another_model(home, settings, caplog):
    """torch → int8: re-embedded once; int8 → onnx (torch's vectors): again; onnx →
    torch-bf16: nothing to do; a collection of another model: refused."""
    from memory.embedder import Embedder
    from memory.journal import Journal
    from memory.service import EmbedderMismatchError, SceneMemory

    journal = Journal(settings.journal_path)
    diary = FIXTURES / "import" / "diary.txt"
    settings.memory.embedder_backend = "torch"
    torch_memory = SceneMemory(settings.memory, home, journal, embedder=Embedder(backend="torch"))
    added = torch_memory.import_paths([diary]).as_dict()["scenes_added"]
    assert added > 0 and torch_memory.store.embedder_identity()["embedder_backend"] == "torch"
    ids = sorted(torch_memory.store.all_ids())
    before = torch_memory.store.get(ids, embeddings=True)

    # The same data root opened with the int8 backend: its vectors are re-embedded, once.
    int8 = Embedder(backend="onnx-int8")
    caplog.set_level("WARNING", logger="memory.service")
    memory = SceneMemory(settings.memory, home, journal, embedder=int8)
    store = memory.store
    assert "re-embedding the" in caplog.text
    assert store.embedder_identity() == int8.identity
    after = store.get(ids, embeddings=True)
    texts = [after[i][0] for i in ids]
    assert [before[i][0] for i in ids] == texts and [before[i][1] for i in ids] == [after[i][1] for i in ids]
    from memory.lines import embed_scenes  # scene vectors are means of their line vectors

    kinds = [after[i][1]["source_kind"] for i in ids]
    assert np.allclose(np.stack([after[i][2] for i in ids]), embed_scenes(int8.encode, texts, kinds)[0], atol=1e-5)
    assert memory.search("Master and Margarita", k=1)

    caplog.clear()
    SceneMemory(settings.memory, home, journal, embedder=int8).store  # nothing left to do
    assert "re-embedding" not in caplog.text

    # torch-bf16 and onnx make torch's vectors (cosine 0.9999): one family, never re-embedded
    # among themselves; back from int8 to that family re-embeds again.
    assert Embedder(backend="torch-bf16").identity == Embedder(backend="onnx").identity == torch_memory.embedder.identity
    SceneMemory(settings.memory, home, journal, embedder=Embedder(backend="onnx")).store
    assert "re-embedding the" in caplog.text
    caplog.clear()
    SceneMemory(settings.memory, home, journal, embedder=Embedder(backend="torch-bf16")).store
    assert "re-embedding" not in caplog.text

    # A collection that another model made is refused, naming what to do.
    store = SceneMemory(settings.memory, home, journal, embedder=int8).store  # int8 again (re-embedded)
    store.record_embedder({**int8.identity, "embedder_model": "paraphrase-multilingual", "embedder_fingerprint": "0" * 12})
    with pytest.raises(EmbedderMismatchError, match="memory.collection"):
        SceneMemory(settings.memory, home, journal, embedder=int8).store
    journal.close()
