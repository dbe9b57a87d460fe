"""Where a sentence-transformers model's transformer runs: torch, or an ONNX export of it run by
ONNX Runtime (fp32 or int8) or OpenVINO.

Tokenizing, pooling and normalising stay the model's own sentence-transformers modules; only the
transformer's forward pass (nearly all the time) moves. sentence-transformers' own `backend="onnx"`
and `"openvino"` go through optimum, whose ONNX exporter (optimum-onnx) needs transformers < 4.58
and whose OpenVINO half (optimum-intel) transformers < 5.6; lmtune runs transformers 5.x, so the
model is exported here with torch.onnx and quantized with onnxruntime.quantization instead.

The export is made once per model, at the first `kb add`, into $LMTUNE_HOME/embeddings/, and the
knowledge base records which backend embedded its chunks, so its queries are embedded the same way.
"""

from __future__ import annotations

import hashlib
import os
import uuid
import warnings
from pathlib import Path

import numpy as np

from lmtune.errors import KbError
from lmtune.files import lmtune_home

BACKENDS = ("torch", "onnx", "onnx-int8", "openvino", "openvino-bf16")
EXTRA = "pip install 'lmtune[kb]'"


def cpu_count() -> int:
    """The cores this process may run on (a container's or taskset's share, not the host's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_computes_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic (AVX512-BF16 or AMX), as OpenVINO, which would use it, reports it."""
    try:
        import openvino
    except ImportError:
        return False
    return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def export_folder(model_folder: str) -> Path:
    """$LMTUNE_HOME/embeddings/<name>-<hash>: one per model folder and weights file, so an updated model is exported anew."""
    folder = Path(model_folder)
    weights = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    stamp = "|".join([str(folder.resolve())] + [f"{w.name}:{w.stat().st_size}:{w.stat().st_mtime_ns}" for w in weights])
    return lmtune_home() / "embeddings" / f"{folder.name}-{hashlib.sha256(stamp.encode()).hexdigest()[:12]}"


class OnnxTransformer:
    """The model's transformer as an ONNX graph: token ids in, token embeddings out."""

    def __init__(self, model, model_folder: str, backend: str):
        self.backend = backend
        self.inputs = list(model[0].tokenizer.model_input_names)
        folder = export_folder(model_folder)
        fp32 = _exported(folder / "model.onnx", lambda path: _export(model, self.inputs, path))
        self.file = fp32 if backend != "onnx-int8" else _exported(folder / "model-int8.onnx", lambda path: _quantize(fp32, path))
        self.run = _onnxruntime(self.file) if backend.startswith("onnx") else _openvino(self.file, backend.removeprefix("openvino"))

    def __call__(self, features: dict) -> np.ndarray:
        return self.run({name: features[name].numpy().astype(np.int64) for name in self.inputs if name in features})


def _exported(path: Path, make) -> Path:
    """The file, made once: written under a temporary name and renamed, so a crash never leaves half an export."""
    if not path.is_file():
        from rich.console import Console

        Console(stderr=True, soft_wrap=True).print(f"making {path.name} for this embedding model, once: {path.parent}", highlight=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{uuid.uuid4().hex[:8]}-{path.name}")
        try:
            make(temporary)
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
    return path


def _export(model, inputs: list[str], path: Path) -> None:
    import torch

    transformer = model[0].auto_model.eval()

    class Forward(torch.nn.Module):  # named inputs in, the last hidden state out
        def __init__(self):
            super().__init__()
            self.transformer = transformer  # a submodule, so its weights export as weights

        def forward(self, *tensors):
            return self.transformer(**dict(zip(inputs, tensors))).last_hidden_state

    sample = model[0].tokenizer(["an example", "a second, longer example"], padding=True, return_tensors="pt")
    axes = {name: {0: "batch", 1: "tokens"} for name in [*inputs, "token_embeddings"]}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on shape checks that are constant for an encoder (verified below)
        # dynamo=False: the TorchScript exporter handles BERT-style models with dynamic axes in seconds.
        # .eval(): export restores the wrapper's mode to its submodules, and a new module is in training mode (dropout on).
        torch.onnx.export(Forward().eval(), tuple(sample[name] for name in inputs), str(path), input_names=inputs,
                          output_names=["token_embeddings"], dynamic_axes=axes, opset_version=17, dynamo=False)
        _verify(transformer, inputs, model[0].tokenizer, path)


def _verify(transformer, inputs: list[str], tokenizer, path: Path) -> None:
    """The export on a batch of another shape than the one it was traced with must give the model's own output."""
    batch = tokenizer(["one", "three short words", "春节通常在公历一月或二月。"], padding=True, return_tensors="pt")
    expected = transformer(**{name: batch[name] for name in inputs}).last_hidden_state.numpy()
    got = _onnxruntime(path)({name: batch[name].numpy() for name in inputs})
    if not np.allclose(got, expected, atol=1e-3):
        raise KbError(f"the ONNX export of this embedding model differs from it (max {np.abs(got - expected).max():.2g}); "
                      "use --backend torch")


def _quantize(fp32: Path, path: Path) -> None:
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Dynamic int8: weights quantized once, activations per batch; MatMul only, where the time goes.
    logging.disable(logging.WARNING)  # its advice to pre-process the graph first, on the root logger; int8 was measured without
    try:
        quantize_dynamic(str(fp32), str(path), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"], per_channel=True)
    finally:
        logging.disable(logging.NOTSET)


def _onnxruntime(path: Path):
    try:
        import onnxruntime
    except ImportError:
        raise KbError(f"the onnx embedding backends need onnxruntime: {EXTRA}") from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = cpu_count()
    # Threads that spin between batches steal the core from the tokenizer and from other processes;
    # on a shared 2-core machine embedding ran 1.35x faster without (benchmarks/RESULTS.md, issue 26).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in onnxruntime.get_available_providers()]
    session = onnxruntime.InferenceSession(str(path), options, providers=providers)
    return lambda feed: session.run(None, feed)[0]


def _openvino(path: Path, precision: str):
    try:
        import openvino
    except ImportError:
        raise KbError(f"the openvino embedding backend needs openvino: {EXTRA}") from None
    # f32 unless bf16 is asked for: left to itself OpenVINO picks bf16 on some CPUs, and a knowledge base
    # must embed its queries as it embedded its chunks. bf16 where the CPU has no bf16 instructions runs as f32.
    settings = {"INFERENCE_NUM_THREADS": cpu_count(), "INFERENCE_PRECISION_HINT": "bf16" if precision == "-bf16" else "f32"}
    compiled = openvino.Core().compile_model(str(path), "CPU", settings)
    request = compiled.create_infer_request()
    return lambda feed: request.infer(feed)[compiled.output(0)].copy()
