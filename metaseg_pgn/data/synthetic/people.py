"""Persons: pedestrians on the sidewalks (alone or in groups) and crossing at the zebra."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .canvas import Canvas, Layer
from .classes import PERSON
from .colors import CLOTHES, SKIN, jitter, rgb, tex
from .scene import Scene
from .shapes import seg_dist

__all__ = ["Person", "PersonLook", "add_people", "make_look"]

_HAIR = [(30, 25, 20), (70, 50, 35), (120, 100, 70), (150, 150, 150)]


@dataclass
class PersonLook:
    """A person's build and clothes: scale ``k`` (height / 1.75 m), walking ``phase`` in [-1, 1],
    seen from the side or the front, colours, a bag, a coat, and a width factor."""

    k: float
    phase: float
    side_view: bool
    shirt: np.ndarray
    trousers: np.ndarray
    skin: np.ndarray
    hair: np.ndarray
    bag: bool
    coat: bool
    width: float


def make_look(rng: np.random.Generator, height: float, side_view: bool) -> PersonLook:
    """Draw a :class:`PersonLook` for a person of ``height`` metres."""
    k = height / 1.75
    phase = rng.uniform(-1, 1) if rng.random() < 0.7 else 0.0
    return PersonLook(
        k=k, phase=phase, side_view=side_view,
        shirt=jitter(rng, rgb(*CLOTHES[rng.integers(len(CLOTHES))]), 12),
        trousers=jitter(rng, rgb(*CLOTHES[rng.integers(len(CLOTHES))]) * 0.8, 10),
        skin=jitter(rng, rgb(*SKIN[rng.integers(len(SKIN))]), 8),
        hair=jitter(rng, rgb(*_HAIR[rng.integers(4)]), 8),
        bag=rng.random() < 0.25, coat=rng.random() < 0.55, width=rng.uniform(1.0, 1.25),
    )


@dataclass
class Person:
    """A :class:`PersonLook` standing at lateral ``X``, depth ``z``: legs, torso, arms, head."""

    X: float
    z: float
    look: PersonLook

    def draw(self, cv: Canvas) -> None:
        P = self.look
        x0, y0, s = cv.upright(self.X, self.z)
        k, ph, wf = P.k, P.phase, P.width
        top = 1.85 * k
        loc = cv.local(x0, y0, s, -0.45 * k, 0.45 * k, 0.0, top)
        if loc is None:
            return
        rr, cc, u, v = loc
        u = u / wf
        col = np.zeros((len(rr), 3), np.float32)
        m = np.zeros(len(rr), bool)
        lw = max(0.07 * k, 0.75 / s)
        hip_y = 0.92 * k
        if P.side_view:
            feet = [(0.28 * ph * k, 0.04), (-0.28 * ph * k, 0.04)]
            hips = [(0.0, hip_y), (0.0, hip_y)]
        else:
            feet = [(-0.11 * k + 0.03 * ph, 0.04), (0.11 * k - 0.03 * ph, 0.04)]
            hips = [(-0.08 * k, hip_y), (0.08 * k, hip_y)]
        for hp, ft in zip(hips, feet):
            leg = seg_dist(u, v, hp, ft) < lw
            col[leg] = P.trousers
            m |= leg
        # torso: trapezoid from hips to shoulders
        sh_y = 1.45 * k
        lean = 0.0
        t = np.clip((v - hip_y) / (sh_y - hip_y), 0, 1)
        half = (0.15 + 0.06 * t) * k
        torso = (v >= hip_y - (0.25 * k if P.coat else 0.05)) & (v <= sh_y + 0.03 * k) & (np.abs(u - lean * t) <= half)
        col[torso] = P.shirt
        m |= torso
        # arms
        swing = 0.18 * ph * k if P.side_view else 0.0
        for sgn in ((0,) if P.side_view else (-1, 1)):
            shoulder = (sgn * 0.2 * k + lean, sh_y - 0.05 * k)
            hand = (sgn * 0.2 * k + swing, 0.85 * k)
            arm = seg_dist(u, v, shoulder, hand) < lw * 0.8
            col[arm] = P.shirt * 0.9
            hnd = np.hypot(u - hand[0], v - hand[1]) < lw
            col[hnd] = P.skin
            m |= arm | hnd
        if P.bag:
            bag = (np.abs(u - 0.22 * k) < 0.08 * k) & (v > 0.85 * k) & (v < 1.1 * k)
            col[bag] = rgb(45, 40, 35)
            m |= bag
        # head and neck
        hc_ = (lean, 1.62 * k)
        head = ((u - hc_[0]) / (0.085 * k)) ** 2 + ((v - hc_[1]) / (0.115 * k)) ** 2 <= 1.0
        neck = (np.abs(u - lean) < 0.045 * k) & (v > sh_y - 0.02) & (v < hc_[1])
        col[head | neck] = P.skin
        hair = head & (v > hc_[1] + 0.02 * k)
        col[hair] = P.hair
        m |= head | neck
        col = tex(col, (cv.noise.grain[rr, cc], 0.06))
        cv.fill(rr[m], cc[m], col[m], PERSON, self.z)


def _add_person(rng: np.random.Generator, scene: Scene, X: float, z: float, *,
                walking_side: bool | None = None) -> None:
    """Draw a :class:`Person` (10 % children) at ``(X, z)`` and add it; ``walking_side`` fixes the
    view (crossing pedestrians are seen from the side), else 35 % are."""
    height = rng.uniform(1.55, 1.95) if rng.random() < 0.9 else rng.uniform(1.1, 1.4)
    side_view = bool(rng.random() < 0.35) if walking_side is None else walking_side
    scene.add(Layer.OBJECT, z, Person(X, z, make_look(rng, height, side_view)))


def add_people(rng: np.random.Generator, scene: Scene) -> None:
    """Pedestrians on each side (Poisson counts, some in groups) and, with a zebra, people crossing."""
    road = scene.road
    for s in scene.sides:
        if s.sw < 1.0:
            n = int(rng.poisson(0.5))
        else:
            n = int(rng.poisson(rng.uniform(1.0, 5.0)))
        for _ in range(n):
            z = rng.uniform(3.5, 40) if rng.random() < 0.7 else rng.uniform(3.5, 20)
            a = rng.uniform(0.4, max(0.5, s.sw - 0.3)) if s.sw > 0 else rng.uniform(0.3, 2.0)
            group = 1 if rng.random() < 0.7 else int(rng.integers(2, 4))
            for g in range(group):
                # the order of the two draws (lateral offset, then depth offset) is the world's
                X = float(road.side_x(s.side, a + 0.5 * g * rng.uniform(-1, 1), z))
                _add_person(rng, scene, X, z + g * rng.uniform(0.3, 1.2))
    # crossing pedestrians on the zebra / road
    if scene.ground.zebra is not None:
        for _ in range(int(rng.poisson(1.5))):
            z = scene.ground.zebra + rng.uniform(0.3, 3.2)
            d = rng.uniform(-road.rw + 0.5, road.rw - 0.5)
            _add_person(rng, scene, float(road.center(z) + d), z, walking_side=True)
