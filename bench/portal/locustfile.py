"""Citizens on the FSE portal, for locust (bench/portal/run.py starts it headless).

Each simulated user logs in as a different seeded citizen through the login
form (GET /fse/accesso/ for the CSRF cookie and token, POST codice_fiscale,
password, csrfmiddlewaretoken; 302 to /fse/), then alternates "my exams"
(/fse/) and the page of one of its own exams (/fse/esami/<booking_pk>/),
picked at random, with a think time between pages.

Environment (run.py sets it):

* ``BENCH_PORTAL_CITIZENS``: the JSON file ``seed.py`` wrote (password and,
  per citizen, the codice fiscale and the keys of their bookings);
* ``BENCH_PORTAL_THINK``: think time in seconds, ``MIN-MAX`` (``0`` for none);
* ``BENCH_PORTAL_TIMINGS``: where to write every request's start time, page,
  milliseconds and outcome at the end, so that run.py computes exact
  percentiles (locust's own are rounded above 100 ms) after a warm-up.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import time
from typing import Any

from locust import FastHttpUser, between, constant, events, task

_CSRF = re.compile(r'name="csrfmiddlewaretoken"\s+value="([^"]+)"')

_data = json.loads(open(os.environ["BENCH_PORTAL_CITIZENS"], encoding="utf-8").read())
PASSWORD = _data["password"]
# Citizens with two exams at least: an exam page to alternate with the list.
CITIZENS = [c for c in _data["citizens"] if len(c["bookings"]) >= 2]
_next_citizen = itertools.count()  # gevent: one thread, no lock needed

_think = os.environ.get("BENCH_PORTAL_THINK", "1-3")
_low, _, _high = _think.partition("-")
WAIT = constant(0) if float(_low) == 0 and not _high else between(float(_low), float(_high or _low))

_timings: list[tuple[float, str, float, bool]] = []


@events.request.add_listener
def _record(
    request_type: str, name: str, response_time: float, response_length: int, exception: Any, **kwargs: Any
) -> None:
    _timings.append((time.time() - response_time / 1000, name, response_time, exception is None))


@events.quitting.add_listener
def _write(environment: Any, **kwargs: Any) -> None:
    path = os.environ.get("BENCH_PORTAL_TIMINGS")
    if path:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(_timings, fh)


class Citizen(FastHttpUser):
    wait_time = WAIT

    def on_start(self) -> None:
        citizen = CITIZENS[next(_next_citizen) % len(CITIZENS)]
        self.bookings = citizen["bookings"]
        with self.client.get("/fse/accesso/", name="login form", catch_response=True) as r:
            found = _CSRF.search(r.text or "")
            if r.status_code != 200 or not found:
                r.failure(f"login form: HTTP {r.status_code}, CSRF token {'found' if found else 'missing'}")
                raise RuntimeError("no login form")
            token = found.group(1)
        with self.client.post(
            "/fse/accesso/",
            data={"codice_fiscale": citizen["codice_fiscale"], "password": PASSWORD, "csrfmiddlewaretoken": token},
            headers={"Referer": self.host + "/fse/accesso/"},
            allow_redirects=False,
            name="login",
            catch_response=True,
        ) as r:
            if r.status_code != 302:
                r.failure(f"login of {citizen['codice_fiscale']}: HTTP {r.status_code}")
                raise RuntimeError("login refused")

    @task
    def exams_then_exam(self) -> None:
        with self.client.get("/fse/", name="/fse/ (my exams)", catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}")
        self.wait()
        pk = random.choice(self.bookings)
        with self.client.get(f"/fse/esami/{pk}/", name="/fse/esami/<pk>/ (exam)", catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}")
