"""Controllers: what proposes the next decision vectors, given rewards of earlier ones.

One interface so users can add their own: ``propose(n)`` returns n decision vectors,
``observe(vectors, rewards)`` feeds results back (in proposal order), and ``state()`` /
``load_state(blob)`` round-trip everything needed to resume exactly (population, policy
parameters and optimizer, RNG) as bytes — never pickle: JSON plus ``np.savez`` arrays.
"""

from __future__ import annotations

import base64
import io
import json
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..diagnostics import MnasError
from ..space import Space

Vector = list[int]


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    return rng.bit_generator.state  # type: ignore[no-any-return]


def _rng_from(state: dict[str, Any]) -> np.random.Generator:
    g = np.random.default_rng()
    g.bit_generator.state = state
    return g


class Controller(ABC):
    """Base class; subclasses implement propose/observe and their state."""

    name = "base"

    def __init__(self, space: Space, seed: int = 0) -> None:
        self.space = space
        self.rng = np.random.default_rng(seed)

    @abstractmethod
    def propose(self, n: int) -> list[Vector]:
        raise NotImplementedError

    def observe(self, vectors: Sequence[Vector], rewards: Sequence[float | None]) -> None:  # noqa: B027
        """Feed results back (``None`` rewards are failed trials); stateless controllers ignore them."""

    def discard(self, vectors: Sequence[Vector]) -> None:  # noqa: B027
        """Forget proposals that were rejected before evaluation (``search --constrain``): they are
        neither observed nor counted, as if the controller had proposed the replacements first."""

    def state(self) -> bytes:
        return json.dumps({"rng": _rng_state(self.rng)}).encode()

    def load_state(self, blob: bytes) -> None:
        self.rng = _rng_from(json.loads(blob)["rng"])


class RandomController(Controller):
    name = "random"

    def propose(self, n: int) -> list[Vector]:
        return [self.space.sample_indices(self.rng) for _ in range(n)]


class EvolutionController(Controller):
    """Regularized (aging) evolution (Real et al. 2019): a FIFO population; each child is a
    one-decision mutation of the best of a random tournament; the oldest member dies."""

    name = "evolution"

    def __init__(self, space: Space, seed: int = 0, population: int = 50, tournament: int = 10) -> None:
        super().__init__(space, seed)
        if population < 2 or not 1 <= tournament <= population:
            raise MnasError(f"evolution needs population >= 2 and 1 <= tournament <= population "
                            f"(got {population}, {tournament})")
        self.population_size = population
        self.tournament = tournament
        self.population: deque[tuple[Vector, float]] = deque()
        self._packed: deque[bytes] = deque()  # each member's vector as int32 bytes, for cheap state()
        self.proposed = 0

    def propose(self, n: int) -> list[Vector]:
        out = []
        for _ in range(n):
            if self.proposed < self.population_size or not self.population:
                out.append(self.space.sample_indices(self.rng))
            else:
                k = min(self.tournament, len(self.population))
                picks = self.rng.choice(len(self.population), size=k, replace=False)
                parent = max((self.population[int(i)] for i in picks), key=lambda p: p[1])[0]
                out.append(self.space.mutate_indices(parent, self.rng))
            self.proposed += 1
        return out

    def discard(self, vectors: Sequence[Vector]) -> None:
        self.proposed -= len(vectors)  # a rejected seed is replaced by another random one, not by a child

    def observe(self, vectors: Sequence[Vector], rewards: Sequence[float | None]) -> None:
        for v, r in zip(vectors, rewards):
            if r is None:
                continue
            self.population.append((list(v), float(r)))
            self._packed.append(np.asarray(v, np.int16).tobytes())
            while len(self.population) > self.population_size:
                self.population.popleft()
                self._packed.popleft()

    def state(self) -> bytes:
        rewards = np.fromiter((r for _, r in self.population), np.float64, len(self.population))
        return json.dumps({"rng": _rng_state(self.rng), "proposed": self.proposed, "n": len(self.population),
                           "vectors": base64.b64encode(b"".join(self._packed)).decode(),
                           "rewards": base64.b64encode(rewards.tobytes()).decode()}).encode()

    def load_state(self, blob: bytes) -> None:
        d = json.loads(blob)
        self.rng = _rng_from(d["rng"])
        self.proposed = int(d["proposed"])
        n = int(d["n"])
        vecs = np.frombuffer(base64.b64decode(d["vectors"]), np.int16).reshape(n, -1) if n else np.zeros((0, 0))
        rewards = np.frombuffer(base64.b64decode(d["rewards"]), np.float64)
        self.population = deque(([int(x) for x in v], float(r)) for v, r in zip(vecs, rewards))
        self._packed = deque(np.asarray(v, np.int16).tobytes() for v, _ in self.population)


class PPOController(Controller):
    """The paper's controller: an LSTM (Flax) emitting one token per decision of the space,
    trained with PPO's clipped objective on the rewards of sampled models, with a moving-average
    baseline and an entropy bonus (Tan et al. 2019, section 3; Schulman et al. 2017).

    Advantages are reward minus the moving-average baseline, then normalized within each batch
    (zero mean, unit variance) as standard PPO implementations do; on this problem that
    normalization is what keeps a 42-token policy from collapsing early."""

    name = "ppo"

    def __init__(self, space: Space, seed: int = 0, hidden: int = 32, lr: float = 0.05, clip: float = 0.2,
                 entropy: float = 0.01, baseline_decay: float = 0.9, epochs: int = 4) -> None:
        super().__init__(space, seed)
        from .policy import Policy

        self.choices = space.num_choices
        self.policy = Policy(self.choices, hidden=hidden, lr=lr, clip=clip, entropy=entropy, epochs=epochs,
                             seed=seed)
        self.baseline: float | None = None
        self.decay = baseline_decay
        self._logp: dict[tuple[int, ...], float] = {}

    def propose(self, n: int) -> list[Vector]:
        vecs, logps = self.policy.sample(n, int(self.rng.integers(2**31)))
        out = []
        for v, lp in zip(vecs, logps):
            v = [int(x) for x in v]
            if not self.space._nonempty(v):  # a vector with no blocks: resample uniformly
                v = self.space.sample_indices(self.rng)
                lp = float(self.policy.log_prob([v])[0])
            self._logp[tuple(v)] = float(lp)
            out.append(v)
        return out

    def discard(self, vectors: Sequence[Vector]) -> None:
        for v in vectors:
            self._logp.pop(tuple(int(x) for x in v), None)

    def observe(self, vectors: Sequence[Vector], rewards: Sequence[float | None]) -> None:
        vs = [list(v) for v in vectors]
        rs = [0.0 if r is None else float(r) for r in rewards]
        if not vs:
            return
        mean = float(np.mean(rs))
        # Moving-average baseline, updated with this batch before use (the batch's mean pulls it
        # along at once, so early batches are not judged against a stale value).
        self.baseline = mean if self.baseline is None else self.decay * self.baseline + (1 - self.decay) * mean
        adv = np.asarray(rs) - self.baseline
        old = np.array([self._logp.pop(tuple(v), np.nan) for v in vs])
        if np.isnan(old).any():
            old = np.asarray(self.policy.log_prob(vs))
        self.policy.update(vs, adv, old)

    def state(self) -> bytes:
        buf = io.BytesIO()
        arrays = self.policy.arrays()
        meta = json.dumps({"rng": _rng_state(self.rng), "baseline": self.baseline,
                           "logp": [[list(k), v] for k, v in self._logp.items()]})
        np.savez(buf, meta=np.frombuffer(meta.encode(), dtype=np.uint8),
                 **{f"a{i}": a for i, a in enumerate(arrays)})
        return buf.getvalue()

    def load_state(self, blob: bytes) -> None:
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            n = len([k for k in z.files if k.startswith("a")])
            arrays = [z[f"a{i}"] for i in range(n)]
        self.rng = _rng_from(meta["rng"])
        self.baseline = meta["baseline"]
        self._logp = {tuple(k): float(v) for k, v in meta["logp"]}
        self.policy.load_arrays(arrays)


ALGOS = ("random", "evolution", "ppo")


def make_controller(algo: str, space: Space, seed: int = 0, **options: Any) -> Controller:
    if algo == "random":
        return RandomController(space, seed)
    if algo == "evolution":
        return EvolutionController(space, seed, population=int(options.get("population", 50)),
                                   tournament=int(options.get("tournament", 10)))
    if algo == "ppo":
        keys = ("hidden", "lr", "clip", "entropy", "baseline_decay", "epochs")
        return PPOController(space, seed, **{k: options[k] for k in keys if options.get(k) is not None})
    raise MnasError(f"unknown search algorithm {algo!r} (choose from {', '.join(ALGOS)})")
