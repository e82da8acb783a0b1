from __future__ import annotations

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import F, Q

from webapp.accounts.models import User
from webapp.core.jobs import Job, JobStatus


class Role(models.TextChoices):
    SYSTEM = "system", "System"
    USER = "user", "User"
    ASSISTANT = "assistant", "Assistant"


class FeedbackKind(models.TextChoices):
    PAIRWISE = "pairwise", "Pairwise"
    RANKING = "ranking", "Ranking"
    CRITIQUE = "critique", "Critique"
    RATING = "rating", "Rating"
    THUMBS = "thumbs", "Thumbs up or down"


def default_feedback_types() -> list[str]:
    """What a project created without judgment kinds asks for: pairwise comparisons."""
    return [FeedbackKind.PAIRWISE.value]


class Project(models.Model):
    """A feedback campaign: its guidelines, the judgments it asks for, and how many people judge each item."""

    name = models.CharField(max_length=120, unique=True)
    guidelines = models.TextField(blank=True, help_text="Markdown shown beside every task.")
    feedback_types = models.JSONField(
        default=default_feedback_types,
        help_text="Enabled kinds: pairwise, ranking, critique, rating, thumbs (in the chat, and on one answer).",
    )
    overlap = models.PositiveSmallIntegerField(default=1, help_text="How many annotators judge each item (k).")
    gold_rate = models.FloatField(default=0.0, help_text="Share of served tasks that are gold items (0 to 1).")
    allow_partial_ranking = models.BooleanField(default=False, help_text="Allow ranking only the top k answers.")
    show_gold_results = models.BooleanField(
        default=False,
        help_text="Annotators see, after each gold item, whether they matched its answer, and their gold accuracy.",
    )
    lease_seconds = models.PositiveIntegerField(default=900, help_text="How long a served task is held for one person.")
    recipe = models.JSONField(
        default=dict, blank=True, help_text="The project's training recipe (webapp.runs.recipe.Recipe); {} = defaults."
    )
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, through="ProjectMember", related_name="projects")
    # How the policy answers the project's prompts (webapp.feedback.generation), for vLLM and the
    # built-in server alike.
    answers_per_prompt = models.PositiveSmallIntegerField(
        default=2, help_text="K: answers written per prompt; 2 makes pairwise tasks, 3 to 9 ranking tasks."
    )
    temperature = models.FloatField(default=0.8, help_text="Sampling temperature of generated answers (0 = greedy).")
    top_p = models.FloatField(default=0.95, help_text="Nucleus sampling: the share of probability mass kept.")
    max_tokens = models.PositiveIntegerField(
        null=True, blank=True, help_text="Longest answer in tokens; empty = the server's POLICY_MAX_TOKENS."
    )
    regenerate_share = models.FloatField(
        default=1.0,
        help_text="After a promotion, the share of unserved items whose answers came from an older version "
        "that get fresh answers from the new one (0 to 1).",
    )

    class QueueOrder(models.TextChoices):
        FIFO = "fifo", "Oldest first"
        RANDOM = "random", "Random"
        UNCERTAINTY = "uncertainty", "Most informative first"

    queue_order = models.CharField(
        max_length=16,
        choices=QueueOrder.choices,
        default=QueueOrder.FIFO,
        help_text="Which open item is served next: oldest first, at random, or the one the reward ensemble "
        "disagrees on most (with a share served at random, `queue_epsilon`).",
    )
    queue_epsilon = models.FloatField(
        default=0.1, help_text="With `uncertainty`: the share of items served at random, so the data stay unbiased."
    )
    archived_at = models.DateTimeField(
        null=True, blank=True, help_text="When an admin archived it: it serves no items and trains by itself no more."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=Q(overlap__gte=1) & Q(overlap__lte=20), name="feedback_overlap_1_to_20"),
            models.CheckConstraint(
                condition=Q(gold_rate__gte=0.0) & Q(gold_rate__lte=1.0), name="feedback_gold_rate_0_to_1"
            ),
            models.CheckConstraint(
                condition=Q(answers_per_prompt__gte=2) & Q(answers_per_prompt__lte=9), name="feedback_k_2_to_9"
            ),
            models.CheckConstraint(
                condition=Q(temperature__gte=0.0) & Q(temperature__lte=2.0), name="feedback_temperature_0_to_2"
            ),
            models.CheckConstraint(condition=Q(top_p__gt=0.0) & Q(top_p__lte=1.0), name="feedback_top_p_0_to_1"),
            models.CheckConstraint(
                condition=Q(regenerate_share__gte=0.0) & Q(regenerate_share__lte=1.0),
                name="feedback_regenerate_share_0_to_1",
            ),
            models.CheckConstraint(
                condition=Q(queue_epsilon__gte=0.0) & Q(queue_epsilon__lte=1.0), name="feedback_epsilon_0_to_1"
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_archived(self) -> bool:
        return self.archived_at is not None


class ProjectMember(models.Model):
    """A person who may work on the project (admins may work on every project): an annotator judges
    its items, a reviewer also adjudicates them, and a project admin also manages it."""

    class Role(models.TextChoices):
        ANNOTATOR = "annotator", "Annotator"
        REVIEWER = "reviewer", "Reviewer"
        ADMIN = "admin", "Project admin"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.ANNOTATOR)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "user"], name="feedback_one_membership")]

    def __str__(self) -> str:
        return f"{self.user_id} in {self.project_id} as {self.role}"


class ItemVector(models.Model):
    """An item's sentence embedding (its question and answers, one unit vector) and the items of
    its project nearest to it when it was embedded: the explorer's "similar items"."""

    task = models.OneToOneField("Task", primary_key=True, on_delete=models.CASCADE, related_name="vector")
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+")
    vector = models.BinaryField(help_text="float32, L2-normalised")
    neighbours = models.JSONField(default=list, help_text="[[task id, cosine], ...], most similar first")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"vector of item {self.task_id}"


class Invitation(models.Model):
    """A one-time link that lets a person make their own account: the link carries a random token,
    of which only the SHA-256 digest is stored; it expires, and it works once. Accepting it may make
    the new person a member of a project in a role."""

    digest = models.CharField(max_length=64, unique=True)
    role = models.CharField(max_length=16, choices=User.Role.choices, default=User.Role.ANNOTATOR)
    project = models.ForeignKey(Project, null=True, blank=True, on_delete=models.CASCADE, related_name="invitations")
    project_role = models.CharField(
        max_length=16, choices=ProjectMember.Role.choices, default=ProjectMember.Role.ANNOTATOR
    )
    note = models.CharField(max_length=200, blank=True, help_text="Whom it is for, as the admin wrote it.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="invitations_sent"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)
    used_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="invitation_accepted"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"invitation {self.pk} ({self.note or self.role})"

    def state(self, now) -> str:  # type: ignore[no-untyped-def]
        if self.used_at is not None:
            return "accepted"
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if now >= self.expires_at else "open"


class Conversation(models.Model):
    """A chat between one person and the policy."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=200, blank=True)
    system_prompt = models.TextField(blank=True, help_text="Sent before every turn, as the model's system message.")
    # The version that answers: an admin may pin one; empty means the serving version at each turn.
    policy_version = models.ForeignKey(
        "runs.ModelVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # The last message of the branch on screen: conversations are trees (edits and regenerations
    # start branches), and this says which path from the root the person is reading.
    current = models.ForeignKey("Message", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at", "-id"]

    def __str__(self) -> str:
        return self.title or f"Conversation {self.pk}"


class Message(models.Model):
    """One turn of a conversation. `parent` makes conversations trees (branches share a prefix)."""

    class Status(models.TextChoices):
        COMPLETE = "complete", "Complete"
        STREAMING = "streaming", "Streaming"
        FAILED = "failed", "Failed"

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="replies")
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPLETE)
    error = models.TextField(blank=True, help_text="Why the policy could not answer (a failed answer only).")
    policy_version = models.ForeignKey(
        "runs.ModelVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="messages"
    )
    # Implicit feedback on an assistant answer from the user's actual next message
    # (webapp.feedback.followups): positive when the reply reads as satisfied, negative as a complaint.
    followup_score = models.FloatField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:40]}"


class Prompt(models.Model):
    """A context to answer: chat messages that end with a user turn."""

    class Source(models.TextChoices):
        CHAT = "chat", "Chat"
        API = "api", "API"
        IMPORT = "import", "Import"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="prompts")
    messages = models.JSONField()
    source = models.CharField(max_length=16, choices=Source.choices)
    external_id = models.CharField(max_length=200, blank=True, help_text="Id in an imported file; re-imports skip it.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="prompts"
    )
    conversation = models.ForeignKey(
        Conversation, null=True, blank=True, on_delete=models.SET_NULL, related_name="prompts"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["project", "external_id"], condition=~Q(external_id=""), name="feedback_prompt_external_id"
            ),
        ]

    def __str__(self) -> str:
        last = self.messages[-1]["content"] if self.messages else ""
        return f"Prompt {self.pk}: {last[:40]}"


class Candidate(models.Model):
    """One answer to a prompt, with where it came from."""

    class Origin(models.TextChoices):
        POLICY = "policy", "Policy"
        HUMAN = "human", "Human"
        IMPORT = "import", "Import"

    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="candidates")
    text = models.TextField()
    origin = models.CharField(max_length=16, choices=Origin.choices, default=Origin.POLICY)
    policy_version = models.ForeignKey(
        "runs.ModelVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="candidates"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"Candidate {self.pk}: {self.text[:40]}"


class Task(models.Model):
    """A judgment to make over a prompt's candidates, served to `required_labels` annotators."""

    Kind = FeedbackKind

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="tasks")
    kind = models.CharField(max_length=16, choices=FeedbackKind.choices, default=FeedbackKind.PAIRWISE)
    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="tasks")
    candidates = models.ManyToManyField(Candidate, through="TaskCandidate", related_name="tasks")
    required_labels = models.PositiveSmallIntegerField(default=1, help_text="Overlap: labels wanted for this item.")
    is_gold = models.BooleanField(default=False)
    gold = models.JSONField(null=True, blank=True, help_text='The known answer of a gold item, e.g. {"choice": "a"}.')
    message = models.ForeignKey(
        Message,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="tasks",
        help_text="The chat turn this comparison was asked for, when it came from the chat.",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # Open assignments (leased or submitted), kept by the queue (webapp.feedback.assignments) as
    # they change, so that finding an item with a free slot reads an index, not every assignment.
    taken = models.PositiveIntegerField(default=0, editable=False)
    # How much a label of this item would teach: the reward ensemble's disagreement on its answers
    # (the variance of the members' score gaps), written when the answers are generated and again
    # when a new reward model is trained. Projects with `queue_order = uncertainty` serve it first.
    priority = models.FloatField(default=0.0, editable=False)
    # A blind comparison of two versions (webapp.runs.arena): each answer from another version, the
    # sides shuffled, and the versions hidden from annotators.
    arena = models.BooleanField(default=False, editable=False)
    # Kept by the label services as labels arrive (webapp.feedback.explore.task_stats_refresh), so the
    # explorer filters and sorts by an index: how many labels the item has, and how much its
    # judges disagree (1 - the share of the most common answer; 0 with fewer than two labels).
    n_labels = models.PositiveIntegerField(default=0, editable=False)
    disagreement = models.FloatField(default=0.0, editable=False)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["project", "kind", "is_gold"]),
            models.Index(fields=["-disagreement", "-id"], name="feedback_task_disagreement"),
            models.Index(fields=["project", "-disagreement", "-id"], name="feedback_task_project_disagree"),
            models.Index(fields=["-priority", "-id"], name="feedback_task_uncertainty"),
            # the queue: a project's items with a free slot, in the order they are served
            models.Index(
                fields=["project", "is_gold", "-required_labels", "created_at", "id"],
                condition=Q(taken__lt=F("required_labels")),
                name="feedback_task_open_queue",
            ),
            models.Index(
                fields=["project", "is_gold", "-required_labels", "-priority", "id"],
                condition=Q(taken__lt=F("required_labels")),
                name="feedback_task_open_by_priority",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} task {self.pk}"


class TaskCandidate(models.Model):
    """A candidate's place in a task: position 0 is shown as A, 1 as B."""

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="slots")
    candidate = models.ForeignKey(Candidate, on_delete=models.CASCADE, related_name="+")
    position = models.PositiveSmallIntegerField()

    class Meta:
        ordering = ["position"]
        constraints = [
            models.UniqueConstraint(fields=["task", "position"], name="feedback_task_position_unique"),
            models.UniqueConstraint(fields=["task", "candidate"], name="feedback_task_candidate_unique"),
        ]

    def __str__(self) -> str:
        return f"task {self.task_id} slot {self.position}: candidate {self.candidate_id}"


class Assignment(models.Model):
    """One task served to one annotator, held under a lease that expires."""

    class Status(models.TextChoices):
        LEASED = "leased", "Leased"
        SUBMITTED = "submitted", "Submitted"
        SKIPPED = "skipped", "Skipped"
        EXPIRED = "expired", "Expired"

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="assignments")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="assignments")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.LEASED)
    leased_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    skip_reason = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-leased_at", "-id"]
        constraints = [
            # Never the same item twice to one person.
            models.UniqueConstraint(fields=["task", "annotator"], name="feedback_one_assignment_per_annotator"),
        ]
        indexes = [models.Index(fields=["status", "expires_at"])]

    def __str__(self) -> str:
        return f"assignment {self.pk}: task {self.task_id} to {self.annotator_id} ({self.status})"


class Label(models.Model):
    """One annotator's raw judgment, kept exactly as given. Aggregates are derived, never stored here."""

    class Choice(models.TextChoices):
        A = "a", "A is better"
        B = "b", "B is better"
        TIE = "tie", "Tie"
        BOTH_BAD = "both_bad", "Both bad"
        UP = "up", "Good answer"  # thumbs, on an item's only answer
        DOWN = "down", "Bad answer"

    class Source(models.TextChoices):
        UI = "ui", "Web page"
        API = "api", "REST API"
        IMPORT = "import", "Import"

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="labels")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="labels")
    assignment = models.OneToOneField(
        Assignment, null=True, blank=True, on_delete=models.SET_NULL, related_name="label"
    )
    kind = models.CharField(max_length=16, choices=FeedbackKind.choices, default=FeedbackKind.PAIRWISE)
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.UI)
    # pairwise
    choice = models.CharField(max_length=16, choices=Choice.choices, blank=True)
    strength = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(3)],
        help_text="1 slightly, 2 clearly, 3 much better; empty for ties.",
    )
    # ranking: groups of candidate ids, best first; a group of several is a tie
    ranking = models.JSONField(null=True, blank=True)
    # critique
    critique = models.TextField(blank=True)
    rewrite = models.TextField(blank=True)
    # rating
    rating = models.PositiveSmallIntegerField(null=True, blank=True)
    rationale = models.TextField(blank=True)
    gold_correct = models.BooleanField(null=True, blank=True, help_text="For gold items: did it match the answer?")
    idempotency_key = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        # the dashboard's labels per day and active people read only their window of labels; a
        # person's page and the people list read one annotator's labels in time order
        indexes = [
            models.Index(fields=["created_at"], name="feedback_label_created"),
            models.Index(fields=["annotator", "created_at"], name="feedback_label_annotator_time"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["task", "annotator"], name="feedback_one_label_per_annotator"),
            models.UniqueConstraint(
                fields=["annotator", "idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="feedback_label_idempotency_key",
            ),
            models.CheckConstraint(
                condition=Q(strength__isnull=True) | (Q(strength__gte=1) & Q(strength__lte=3)),
                name="feedback_label_strength_1_to_3",
            ),
            models.CheckConstraint(
                condition=Q(rating__isnull=True) | (Q(rating__gte=1) & Q(rating__lte=7)),
                name="feedback_label_rating_1_to_7",
            ),
            models.CheckConstraint(
                condition=~Q(kind="pairwise") | ~Q(choice=""), name="feedback_pairwise_label_has_choice"
            ),
            models.CheckConstraint(
                condition=~Q(kind="thumbs") | Q(choice__in=["up", "down"]), name="feedback_thumbs_label_up_or_down"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} label {self.pk}"


class Adjudication(models.Model):
    """A reviewer's final answer for an item, with a note: kept beside the item's raw labels, never
    over them. The recipe's `adjudicated` label mode trains on it instead of the item's labels."""

    task = models.OneToOneField(Task, on_delete=models.CASCADE, related_name="adjudication")
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="adjudications")
    answer = models.JSONField(help_text="The final judgment, in a label's fields (choice, ranking, critique, ...).")
    note = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"adjudication of task {self.task_id}"


class MessageFeedback(models.Model):
    """Thumbs up or down on an assistant message in the chat, with an optional reason."""

    class Value(models.TextChoices):
        UP = "up", "Thumbs up"
        DOWN = "down", "Thumbs down"

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="feedback")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="message_feedback")
    value = models.CharField(max_length=8, choices=Value.choices)
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["message", "user"], name="feedback_one_thumb_per_message")]

    def __str__(self) -> str:
        return f"{self.value} on message {self.message_id}"


class Figure(models.Model):
    """A figure over all of a project's labels (webapp.feedback.figures), kept with the state of the
    data it was computed from, so a page reads it instead of every label."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="figures")
    name = models.CharField(max_length=64)
    params = models.JSONField(default=list, blank=True, help_text="What it was computed with (a recipe).")
    params_key = models.CharField(max_length=32)
    state = models.CharField(
        max_length=32, blank=True, help_text="The data state it was computed in (figures.data_state)."
    )
    value = models.JSONField(null=True, blank=True, help_text="Empty until a worker computes it the first time.")
    seconds = models.FloatField(default=0.0, help_text="How long it took to compute.")
    computed_at = models.DateTimeField(null=True, blank=True)
    refresh_queued_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "name", "params_key"], name="feedback_one_figure_per_params")
        ]

    def __str__(self) -> str:
        return f"{self.name} of project {self.project_id}"


class DataEpoch(models.Model):
    """One row: how many times data changed in a way the newest ids do not show (figures_changed)."""

    value = models.PositiveBigIntegerField(default=0)

    def __str__(self) -> str:
        return f"data epoch {self.value}"


class ImportJob(Job):
    """A feedback file too large to import inside a request: stored, then read by a worker, with
    counts the admin can watch as it goes (`GET /api/imports/<id>/`, the dashboard)."""

    Status = JobStatus

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="import_jobs")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    format = models.CharField(max_length=16)
    file_name = models.CharField(max_length=255, help_text="The name the file was uploaded under.")
    path = models.CharField(max_length=500, help_text="Where the upload waits for the worker (removed after).")
    size_bytes = models.BigIntegerField(default=0)
    items = models.PositiveIntegerField(default=0)
    created_tasks = models.PositiveIntegerField(default=0)
    created_prompts = models.PositiveIntegerField(default=0)
    skipped = models.PositiveIntegerField(default=0)
    labels = models.PositiveIntegerField(default=0)
    bad_lines = models.PositiveIntegerField(default=0)
    bad = models.JSONField(default=list, blank=True, help_text="The first 1,000 bad lines: line and message.")
    lines_total = models.PositiveIntegerField(
        default=0, help_text="Lines in the uploaded file, counted as it was stored (0: not known, a gzip file)."
    )
    lines_read = models.PositiveIntegerField(default=0, help_text="The last line the worker has read so far.")

    @property
    def progress(self) -> float | None:
        """The share of the file read (1 once it succeeded), or None when the file's length is not known."""
        if self.status == JobStatus.SUCCEEDED:
            return 1.0
        if not self.lines_total:
            return None
        return min(self.lines_read / self.lines_total, 1.0)

    job_kind = "import"

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"import {self.pk} of {self.file_name} ({self.status})"

    def job_task(self) -> tuple[str, str]:
        return "prefloop.import_feedback", "cpu"

    def job_ended(self) -> None:
        """However it ended, its upload is removed, and the webhooks that listen hear of it."""
        from pathlib import Path

        from webapp.hooks.services import event_emit

        if self.path:
            Path(self.path).unlink(missing_ok=True)
        event_emit("import.finished", {
            "import": self.pk, "project": self.project_id, "file_name": self.file_name, "status": self.status,
            "items": self.items, "labels": self.labels, "bad_lines": self.bad_lines, "error": self.error[:2000],
        })  # fmt: skip


class GenerationJob(Job):
    """The policy writing answers for a project's prompts on a worker (the `generate` queue), with
    counts the admin can watch (`GET /api/generation-jobs/<id>/`, the dashboard).

    `prompts` jobs answer the project's open prompts (those without an item yet), or the listed
    ones; `refresh` jobs, sent after a promotion, give fresh answers from the serving version to
    unserved items whose answers an older version wrote; `arena` jobs have two versions answer the
    listed prompts once each, for people to compare blind.
    """

    class Kind(models.TextChoices):
        PROMPTS = "prompts", "Answer open prompts"
        REFRESH = "refresh", "Refresh after a promotion"
        ARENA = "arena", "Arena comparisons"

    Status = JobStatus

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="generation_jobs")
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.PROMPTS)
    prompt_ids = models.JSONField(null=True, blank=True, help_text="Only these prompts; empty = every open prompt.")
    versions = models.JSONField(
        null=True, blank=True, help_text="An arena job's two versions (ids): each answers every prompt once."
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    policy_version = models.ForeignKey(
        "runs.ModelVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="generation_jobs",
        help_text="The version that wrote the answers (the serving one when the job started).",
    )  # fmt: skip
    prompts_total = models.PositiveIntegerField(default=0)
    prompts_done = models.PositiveIntegerField(default=0)
    tasks_created = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0, help_text="Prompts the policy server could not answer.")

    job_kind = "generation"
    on_lost = "retry"  # it resumes: the items it made stay, the prompts left are answered

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"generation {self.pk} for {self.project_id} ({self.status})"

    def job_task(self) -> tuple[str, str]:
        return "prefloop.generate", "generate"

    @property
    def job_progress(self) -> float | None:
        return self.prompts_done / self.prompts_total if self.prompts_total else None


class EmbeddingJob(Job):
    """Embed a project's items that have no vector yet, then find each one's nearest items."""

    job_kind = "embedding"
    on_lost = "retry"  # it resumes: what was embedded stays

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="embedding_jobs")
    items_total = models.PositiveIntegerField(default=0)
    items_done = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"embedding {self.pk} of {self.project} ({self.status})"

    def job_task(self) -> tuple[str, str]:
        return "prefloop.items_embed", "cpu"

    @property
    def job_progress(self) -> float | None:
        return min(self.items_done / self.items_total, 1.0) if self.items_total else None
