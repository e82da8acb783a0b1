from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q

from webapp.core.jobs import Job, JobStatus


class ModelVersion(models.Model):
    """A policy version: the base model plus one LoRA adapter in the artifact store."""

    class Status(models.TextChoices):
        CANDIDATE = "candidate", "Candidate"
        SERVING = "serving", "Serving"
        RETIRED = "retired", "Retired"
        REJECTED = "rejected", "Rejected"

    number = models.PositiveIntegerField(unique=True)
    kind = models.CharField(max_length=16, default="lora")
    base_model = models.CharField(max_length=500)
    artifact_path = models.CharField(max_length=1000)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="children")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.CANDIDATE)
    config = models.JSONField(default=dict, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    data_hash = models.CharField(max_length=64, blank=True)
    # The evaluation gate: each check's figure, the threshold it was held to, and the verdict
    # ({"verdict": "passed" | "rejected" | "waiting" | "unchecked", "against": "v3", "checks": [...], "reason": ...}).
    gate = models.JSONField(default=dict, blank=True)
    # The ids of the labels that trained this version (a snapshot: "which labels made v7").
    label_ids = models.JSONField(default=list, blank=True)
    project = models.ForeignKey(
        "feedback.Project", null=True, blank=True, on_delete=models.SET_NULL, related_name="versions"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    promoted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-number"]
        constraints = [
            models.UniqueConstraint(fields=["status"], condition=Q(status="serving"), name="runs_one_serving_version"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def name(self) -> str:
        return f"v{self.number}"

    @property
    def adapter_name(self) -> str:
        """The name the policy server serves this version under, e.g. ``policy-v2``.

        Each version gets its own name rather than replacing one adapter's weights in place: vLLM
        swaps weights in place between decoding steps, so an answer being written during the swap
        would end with the new weights. With one name per version an answer comes from one
        version from its first token to its last.
        """
        return f"{settings.POLICY_MODEL_NAME}-v{self.number}"

    @property
    def gate_failures(self) -> list[str]:
        """What the gate found wrong, one phrase per failed check (empty when none failed)."""
        checks = self.gate.get("checks", []) if isinstance(self.gate, dict) else []
        return [str(c.get("summary", c.get("name"))) for c in checks if c.get("passed") is False]


class ServingEvent(models.Model):
    """An entry of an audit trail of what serves: a promotion, rollback or rejection, by whom and why."""

    class Action(models.TextChoices):
        PROMOTE = "promote", "Promoted"
        ROLLBACK = "rollback", "Rolled back"
        REJECT = "reject", "Rejected by the gate"

    action = models.CharField(max_length=16, choices=Action.choices)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        abstract = True
        ordering = ["-created_at", "-id"]

    @property
    def actor_name(self) -> str:
        return self.actor.username if self.actor is not None else "the gate"


class VersionEvent(ServingEvent):
    """The audit trail of the serving policy version."""

    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="events")
    previous = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta(ServingEvent.Meta):
        pass

    def __str__(self) -> str:
        return f"{self.action} {self.version}"


class RewardModelEvent(ServingEvent):
    """The audit trail of each project's serving reward model."""

    reward_model = models.ForeignKey("RewardModel", on_delete=models.CASCADE, related_name="events")
    previous = models.ForeignKey("RewardModel", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta(ServingEvent.Meta):
        pass

    def __str__(self) -> str:
        return f"{self.action} {self.reward_model}"


class RewardModel(models.Model):
    """A trained reward model (one model or an ensemble) in the artifact store, with its held-out
    metrics. Versioned like policies: a reward run makes a candidate, which serves its project (the
    gate, GRPO, online DPO and the queue use the serving one) only if it is not worse than the one
    serving on the project's held-out labels; promote and roll back as for policies."""

    class Status(models.TextChoices):
        CANDIDATE = "candidate", "Candidate"
        SERVING = "serving", "Serving"
        RETIRED = "retired", "Retired"
        REJECTED = "rejected", "Rejected"

    number = models.PositiveIntegerField(unique=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.CANDIDATE)
    # the reward gate ({"verdict", "reason", "against", "accuracy", "log_loss", "length_rule_accuracy", "checks"})
    gate = models.JSONField(default=dict, blank=True)
    promoted_at = models.DateTimeField(null=True, blank=True)
    backbone = models.CharField(max_length=500)
    project = models.ForeignKey(
        "feedback.Project", null=True, blank=True, on_delete=models.SET_NULL, related_name="reward_models"
    )
    artifact_path = models.CharField(max_length=1000)
    member_paths = models.JSONField(default=list, blank=True)  # relative to artifact_path; [""] for one model
    config = models.JSONField(default=dict, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    data_hash = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-number"]
        constraints = [
            models.UniqueConstraint(
                fields=["project"], condition=Q(status="serving"), name="runs_one_serving_reward_model_per_project"
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def name(self) -> str:
        return f"rm{self.number}"

    @property
    def n_members(self) -> int:
        """Members as the ensemble is scored: one per model, or per score head of a 'heads' model."""
        members = self.metrics.get("members") if isinstance(self.metrics, dict) else None
        heads = sum(int(m.get("heads", 1)) for m in members or [] if isinstance(m, dict))
        return heads or len(self.member_paths)


class TrainingRun(Job):
    """One training job: queued by an admin, the API or the label threshold; run by a worker."""

    Status = JobStatus

    class Stage(models.TextChoices):
        WAITING = "", "Waiting"
        TRAINING = "training", "Training"
        EVALUATING = "evaluating", "Evaluating"
        SERVING = "serving", "Serving"
        DONE = "done", "Done"

    class Trigger(models.TextChoices):
        ADMIN = "admin", "Admin"
        API = "api", "API"
        THRESHOLD = "threshold", "Label threshold"

    class Kind(models.TextChoices):
        DPO = "dpo", "DPO policy update"
        KTO = "kto", "KTO policy update"
        GRPO = "grpo", "GRPO policy update"
        LIPO = "lipo", "LiPO policy update"
        ONLINE_DPO = "online_dpo", "Online DPO policy update"
        REWARD = "reward", "Reward model"

    ACTIVE_STATUSES = (Status.QUEUED, Status.RUNNING)

    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.DPO)
    stage = models.CharField(max_length=16, choices=Stage.choices, default=Stage.WAITING, blank=True)
    project = models.ForeignKey(
        "feedback.Project", null=True, blank=True, on_delete=models.CASCADE, related_name="runs"
    )
    # The project's recipe as it was when the run was queued (later edits do not change a queued run).
    recipe = models.JSONField(default=dict, blank=True)
    trigger = models.CharField(max_length=16, choices=Trigger.choices)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    parent_version = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    result_version = models.OneToOneField(
        ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="run"
    )
    result_reward_model = models.OneToOneField(
        RewardModel, null=True, blank=True, on_delete=models.PROTECT, related_name="run"
    )
    progress = models.FloatField(default=0.0)
    metrics = models.JSONField(default=dict, blank=True)
    history = models.JSONField(default=list, blank=True)
    n_labels = models.PositiveIntegerField(default=0)
    n_pairs = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            # At most one queued-or-running run per project and kind: a double click queues one run.
            models.UniqueConstraint(
                fields=["project", "kind"],
                condition=Q(status__in=["queued", "running"]),
                name="runs_one_active_run_per_project_kind",
            ),
            models.CheckConstraint(
                condition=Q(progress__gte=0.0) & Q(progress__lte=1.0), name="runs_progress_between_0_and_1"
            ),
        ]

    def __str__(self) -> str:
        return f"run {self.pk} ({self.kind}, {self.status})"

    def job_end_fields(self) -> dict[str, Any]:
        return {"stage": self.Stage.DONE}

    def job_ended(self) -> None:
        """The webhooks that listen hear how it ended."""
        from webapp.hooks.services import event_emit

        event_emit("run.finished", {
            "run": self.pk, "kind": self.job_type(), "project": self.project_id, "status": self.status,
            "error": self.error[:2000], "version": getattr(self.result_version, "number", None),
        })  # fmt: skip

    def job_type(self) -> str:
        return "reward" if self.kind == self.Kind.REWARD else "policy"

    def job_task(self) -> tuple[str, str]:
        return ("prefloop.train_reward" if self.kind == self.Kind.REWARD else "prefloop.train_policy"), "gpu"

    @property
    def job_progress(self) -> float | None:
        return self.progress
