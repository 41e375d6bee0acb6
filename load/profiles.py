"""The load profiles: seed 001's k6 shapes (load, stress, spike, soak) scaled to a 2-core machine.

Each profile is a list of stages ``(until_s, users, spawn_rate)``: from the end of the previous
stage until ``until_s`` seconds into the run, locust moves to ``users`` users at ``spawn_rate``
users/s. Every stage is bounded, and so is the whole run: after the last stage the test stops.
``smoke`` is the 20 s version `make test` runs (tests/test_load_smoke.py).
"""
from __future__ import annotations

Stage = tuple[float, int, float]

PROFILES: dict[str, list[Stage]] = {
    # k6 "load": ramp up, hold at the expected load, ramp down (5 users, 2 min)
    "load": [(20, 5, 0.25), (100, 5, 1.0), (120, 1, 1.0)],
    # k6 "stress": steps beyond the expected load (5 -> 10 -> 20 users, 3 min)
    "stress": [(30, 5, 0.5), (60, 5, 1.0), (75, 10, 0.5), (105, 10, 1.0), (120, 20, 1.0),
               (170, 20, 1.0), (180, 1, 5.0)],
    # k6 "spike": from almost nothing to 30 users in 3 s, hold, drop (50 s)
    "spike": [(10, 2, 1.0), (15, 30, 10.0), (35, 30, 1.0), (40, 2, 10.0), (50, 2, 1.0)],
    # k6 "soak": the expected load for a long time (5 users, 12 min)
    "soak": [(30, 5, 0.2), (690, 5, 1.0), (720, 1, 1.0)],
    # the smoke run of `make test`: a few users for 20 s
    "smoke": [(5, 3, 1.0), (20, 3, 1.0)],
}


def duration_s(profile: str) -> float:
    return PROFILES[profile][-1][0]


def shape_for(profile: str):
    """A LoadTestShape class running ``profile``'s stages, then stopping. (locust is imported
    here, not above: importing it monkey-patches the process with gevent, which only the
    locust process may have; the runner and the tests import this module too.)"""
    from locust import LoadTestShape

    stages = PROFILES[profile]

    class ProfileShape(LoadTestShape):
        name = profile

        def tick(self):
            t = self.get_run_time()
            for until_s, users, rate in stages:
                if t < until_s:
                    return users, rate
            return None  # bounded: the run ends after the last stage

    ProfileShape.__name__ = ProfileShape.__qualname__ = f"{profile.capitalize()}Shape"
    return ProfileShape
