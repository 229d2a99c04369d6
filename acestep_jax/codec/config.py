"""Configurations of the codec models (defaults: the released ``music_dcae_f8c8`` / ``music_vocoder``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


def _known(cls, d: dict, overrides: dict) -> dict:
    """The keys of ``d`` that ``cls`` knows (metadata such as ``_class_name`` is dropped)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in {**d, **overrides}.items() if k in names}


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


@dataclass(frozen=True)
class DCAEConfig:
    """Constructor arguments of diffusers' ``AutoencoderDC`` (as used by ``music_dcae_f8c8``)."""

    in_channels: int = 2
    latent_channels: int = 8
    attention_head_dim: int = 32
    encoder_block_types: tuple[str, ...] = ("ResBlock", "ResBlock", "ResBlock", "EfficientViTBlock")
    decoder_block_types: tuple[str, ...] = ("ResBlock", "ResBlock", "ResBlock", "EfficientViTBlock")
    encoder_block_out_channels: tuple[int, ...] = (128, 256, 512, 1024)
    decoder_block_out_channels: tuple[int, ...] = (128, 256, 512, 1024)
    encoder_layers_per_block: tuple[int, ...] = (2, 2, 3, 3)
    decoder_layers_per_block: tuple[int, ...] = (3, 3, 3, 3)
    encoder_qkv_multiscales: tuple[tuple[int, ...], ...] = ((), (), (5,), (5,))
    decoder_qkv_multiscales: tuple[tuple[int, ...], ...] = ((), (), (5,), (5,))
    upsample_block_type: str = "interpolate"
    downsample_block_type: str = "Conv"
    decoder_norm_types: str | tuple[str, ...] = "rms_norm"
    decoder_act_fns: str | tuple[str, ...] = "silu"
    encoder_out_shortcut: bool = True
    decoder_in_shortcut: bool = True
    decoder_conv_act_fn: str = "relu"
    scaling_factor: float = 0.41407
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        n = len(self.encoder_block_out_channels)
        for name in ("encoder_block_types", "encoder_layers_per_block", "encoder_qkv_multiscales"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} needs {n} entries (one per encoder level)")
        m = len(self.decoder_block_out_channels)
        for name in ("decoder_block_types", "decoder_layers_per_block", "decoder_qkv_multiscales"):
            if len(getattr(self, name)) != m:
                raise ValueError(f"{name} needs {m} entries (one per decoder level)")
        for name in ("decoder_norm_types", "decoder_act_fns"):
            v = getattr(self, name)
            if not isinstance(v, str) and len(v) != m:
                raise ValueError(f"{name} needs one entry per decoder level ({m})")
        if self.encoder_layers_per_block[0] <= 0 or self.decoder_layers_per_block[0] <= 0:
            raise ValueError("layers_per_block[0] must be positive (the released layout)")
        bad = {t for t in (*self.encoder_block_types, *self.decoder_block_types)} - {
            "ResBlock",
            "EfficientViTBlock",
        }
        if bad:
            raise ValueError(f"unsupported DC-AE block types {sorted(bad)}")
        if self.upsample_block_type not in ("interpolate", "pixel_shuffle"):
            raise ValueError(f"unsupported upsample_block_type {self.upsample_block_type!r}")
        if self.downsample_block_type not in ("Conv", "pixel_unshuffle"):
            raise ValueError(f"unsupported downsample_block_type {self.downsample_block_type!r}")
        if set(self.decoder_norms) != {"rms_norm"}:
            raise ValueError(f"only rms_norm decoder norms are supported, got {self.decoder_norm_types!r}")
        if not set(self.decoder_acts) | {self.decoder_conv_act_fn} <= {"silu", "relu", "relu6"}:
            raise ValueError(
                f"unsupported decoder activations {self.decoder_act_fns!r}/{self.decoder_conv_act_fn!r}"
            )

    @property
    def decoder_norms(self) -> tuple[str, ...]:
        v = self.decoder_norm_types
        return (v,) * len(self.decoder_block_out_channels) if isinstance(v, str) else tuple(v)

    @property
    def decoder_acts(self) -> tuple[str, ...]:
        v = self.decoder_act_fns
        return (v,) * len(self.decoder_block_out_channels) if isinstance(v, str) else tuple(v)

    @property
    def downsample_factor(self) -> int:
        """Spatial compression of the encoder (8 for three downsampling levels)."""
        return 2 ** (len(self.encoder_block_out_channels) - 1)

    @classmethod
    def from_dict(cls, d: dict, **overrides) -> DCAEConfig:
        """Build from the reference ``config.json`` (unknown keys such as ``_class_name`` are ignored)."""
        return cls(**{k: _tuples(v) for k, v in _known(cls, d, overrides).items()})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class VocoderConfig:
    """Constructor arguments of ``ADaMoSHiFiGANV1`` (ConvNeXt backbone + HiFi-GAN head)."""

    input_channels: int = 128
    depths: tuple[int, ...] = (3, 3, 9, 3)
    dims: tuple[int, ...] = (128, 256, 384, 512)
    drop_path_rate: float = 0.0
    kernel_sizes: tuple[int, ...] = (7,)
    upsample_rates: tuple[int, ...] = (4, 4, 2, 2, 2, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (8, 8, 4, 4, 4, 4, 4)
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11, 13)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5), (1, 3, 5))
    num_mels: int = 512
    upsample_initial_channel: int = 1024
    use_template: bool = False
    pre_conv_kernel_size: int = 13
    post_conv_kernel_size: int = 13
    sampling_rate: int = 44100
    n_fft: int = 2048
    win_length: int = 2048
    hop_length: int = 512
    f_min: int = 40
    f_max: int = 16000
    n_mels: int = 128
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        if len(self.depths) != len(self.dims):
            raise ValueError("depths and dims need the same length")
        if len(self.kernel_sizes) != 1:
            raise ValueError(f"only a single ConvNeXt kernel size is supported, got {self.kernel_sizes}")
        if self.num_mels != self.dims[-1]:
            raise ValueError(
                f"num_mels ({self.num_mels}) must equal the backbone width dims[-1] ({self.dims[-1]})"
            )
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ValueError("upsample_rates and upsample_kernel_sizes need the same length")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise ValueError("resblock_kernel_sizes and resblock_dilation_sizes need the same length")
        hop = 1
        for u in self.upsample_rates:
            hop *= u
        if hop != self.hop_length:
            raise ValueError(f"prod(upsample_rates) = {hop} must equal hop_length {self.hop_length}")
        if self.use_template:
            raise ValueError(
                "use_template=True (noise templates) is not supported; the released vocoder has it off"
            )
        if self.upsample_initial_channel % 2 ** len(self.upsample_rates):
            raise ValueError("upsample_initial_channel must halve evenly at every upsampling stage")

    @classmethod
    def from_dict(cls, d: dict, **overrides) -> VocoderConfig:
        """Build from the reference ``config.json`` (unknown keys such as ``_class_name`` are ignored)."""
        return cls(**{k: _tuples(v) for k, v in _known(cls, d, overrides).items()})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
