"""``Dense``'s channel-first forms (per-item GEMMs, used by the head-major linear attention) equal
its plain form, low-rank adapter included."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from acestep_jax.nn import Dense
from tests.helpers import assert_close


def _dense_with_lora(din: int, dout: int, rank: int = 3) -> Dense:
    dense = Dense(din, dout, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(1)
    dense.lora_a = nnx.LoRAParam(jnp.asarray(rng.standard_normal((din, rank)), jnp.float32))
    dense.lora_b = nnx.LoRAParam(jnp.asarray(rng.standard_normal((rank, dout)), jnp.float32))
    dense.lora_scale = 0.5
    return dense


def test_channel_first_forms_equal_the_plain_form():
    dense = _dense_with_lora(6, 10)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 7, 6)), jnp.float32)
    plain = dense(x)
    assert_close(dense.to_channels_first(x), jnp.swapaxes(plain, 1, 2), rtol=1e-5, atol=1e-5, what="to")
    assert_close(dense.from_channels_first(jnp.swapaxes(x, 1, 2)), plain, rtol=1e-5, atol=1e-5, what="from")
