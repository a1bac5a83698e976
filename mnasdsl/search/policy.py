"""The PPO controller's policy: a Flax (nnx) LSTM emitting one token per decision.

Each decision d has its own softmax head over its n_d choices (padded to the widest and
masked), and the chosen token's embedding feeds the next step, as in the NAS controllers of
Zoph & Le and MnasNet. Sampling, log-probabilities and the PPO update are jitted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx


class Mask(nnx.Variable):
    """Which (decision, choice) slots exist; a constant, not trained."""


class PolicyNet(nnx.Module):
    def __init__(self, choices: Sequence[int], hidden: int, rngs: nnx.Rngs) -> None:
        d, m = len(choices), max(choices)
        self.d, self.m = d, m
        init = jax.nn.initializers.normal(0.05)
        self.start = nnx.Param(init(rngs.params(), (hidden,)))
        self.embed = nnx.Param(init(rngs.params(), (d, m, hidden)))
        self.cell = nnx.LSTMCell(hidden, hidden, rngs=rngs)
        # Small output weights: the initial policy is close to uniform over each decision.
        self.w = nnx.Param(jax.nn.initializers.normal(0.01)(rngs.params(), (d, hidden, m)))
        self.b = nnx.Param(jnp.zeros((d, m)))
        mask = np.zeros((d, m), bool)
        for i, n in enumerate(choices):
            mask[i, :n] = True
        self.mask = Mask(jnp.asarray(mask))

    def _run(self, n: int, tokens: jax.Array | None, key: jax.Array | None
             ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """One pass over the decisions with ``lax.scan`` (compile time independent of their
        number): teacher-forced on ``tokens`` (B, D) when given, else sampling with ``key``."""
        x0 = jnp.broadcast_to(self.start[...], (n, self.start.shape[0]))
        carry0 = self.cell.initialize_carry((n, x0.shape[1]), nnx.Rngs(0))
        cell_def, cell_state = nnx.split(self.cell)
        keys = jax.random.split(key if key is not None else jax.random.key(0), self.d)
        toks_in = tokens.T if tokens is not None else jnp.zeros((self.d, n), jnp.int32)
        xs = (self.w[...], self.b[...], self.mask[...], self.embed[...], toks_in, keys)
        teacher = tokens is not None

        def body(carry: Any, inp: Any) -> tuple[Any, Any]:
            state, x = carry
            w, b, mask, embed, tok, k = inp
            state, y = nnx.merge(cell_def, cell_state)(state, x)
            lp = jax.nn.log_softmax(jnp.where(mask, y @ w + b, -1e9))
            if not teacher:
                tok = jax.random.categorical(k, lp, axis=1)
            logp = jnp.take_along_axis(lp, tok[:, None], axis=1)[:, 0]
            ent = -jnp.sum(jnp.where(mask, jnp.exp(lp) * lp, 0.0), axis=1)
            return (state, embed[tok]), (tok, logp, ent)

        _, (toks, logp, ent) = jax.lax.scan(body, (carry0, x0), xs)
        return toks.T, logp.sum(axis=0), ent.mean(axis=0)

    def score(self, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Log-probability of each token sequence (B, D) and the mean per-step entropy."""
        _, logp, ent = self._run(tokens.shape[0], tokens, None)
        return logp, ent

    def sample(self, key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
        toks, logp, _ = self._run(n, None, key)
        return toks, logp


class Policy:
    """Holds the net, its optimizer and the jitted functions."""

    def __init__(self, choices: Sequence[int], *, hidden: int = 64, lr: float = 5e-3, clip: float = 0.2,
                 entropy: float = 1e-3, epochs: int = 4, seed: int = 0) -> None:
        self.net = PolicyNet(list(choices), hidden, nnx.Rngs(seed))
        self.graphdef, params, self.rest = nnx.split(self.net, nnx.Param, ...)
        self.params = params
        self.tx = optax.adam(lr)
        self.opt_state = self.tx.init(params)
        self.clip, self.entropy_coef, self.epochs = clip, entropy, epochs
        graphdef, rest, tx = self.graphdef, self.rest, self.tx

        def _score(params: Any, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
            return nnx.merge(graphdef, params, rest).score(tokens)

        def _sample(params: Any, key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
            return nnx.merge(graphdef, params, rest).sample(key, n)

        def _loss(params: Any, tokens: jax.Array, adv: jax.Array, old: jax.Array) -> jax.Array:
            logp, ent = _score(params, tokens)
            ratio = jnp.exp(logp - old)
            clipped = jnp.clip(ratio, 1 - clip, 1 + clip)
            return -jnp.mean(jnp.minimum(ratio * adv, clipped * adv)) - entropy * jnp.mean(ent)

        def _step(params: Any, opt_state: Any, tokens: jax.Array, adv: jax.Array, old: jax.Array
                  ) -> tuple[Any, Any, jax.Array]:
            loss, grads = jax.value_and_grad(_loss)(params, tokens, adv, old)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        self._score = jax.jit(_score)
        self._sample = jax.jit(_sample, static_argnums=2)
        self._step = jax.jit(_step)

    def sample(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        toks, logp = self._sample(self.params, jax.random.key(seed), n)
        return np.asarray(toks), np.asarray(logp)

    def log_prob(self, vectors: Sequence[Sequence[int]]) -> np.ndarray:
        logp, _ = self._score(self.params, jnp.asarray(np.asarray(vectors, np.int32)))
        return np.asarray(logp)

    def update(self, vectors: Sequence[Sequence[int]], adv: np.ndarray, old_logp: np.ndarray) -> float:
        tokens = jnp.asarray(np.asarray(vectors, np.int32))
        a = np.asarray(adv, np.float32)
        if len(a) > 1:  # per-batch advantage normalization, as standard PPO implementations do
            a = a - a.mean()
            if a.std() > 1e-8:
                a = a / a.std()
        a_j, old = jnp.asarray(a), jnp.asarray(np.asarray(old_logp, np.float32))
        loss = jnp.zeros(())
        for _ in range(self.epochs):
            self.params, self.opt_state, loss = self._step(self.params, self.opt_state, tokens, a_j, old)
        return float(loss)

    def arrays(self) -> list[np.ndarray]:
        return [np.asarray(x) for x in jax.tree.leaves((self.params, self.opt_state))]

    def load_arrays(self, arrays: list[np.ndarray]) -> None:
        leaves, treedef = jax.tree.flatten((self.params, self.opt_state))
        if len(leaves) != len(arrays) or any(np.shape(a) != np.shape(b) for a, b in zip(leaves, arrays)):
            from ..diagnostics import MnasError

            raise MnasError("saved PPO controller state does not match this space / controller settings")
        self.params, self.opt_state = jax.tree.unflatten(treedef, [jnp.asarray(a) for a in arrays])
