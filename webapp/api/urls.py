from __future__ import annotations

from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from webapp.api import apis, auth, campaign, chat

urlpatterns = [
    path("auth/token/", auth.TokenCreateApi.as_view(), name="api-token"),
    path("auth/tokens/", auth.TokenListApi.as_view(), name="api-tokens"),
    path("auth/tokens/<str:token_id>/", auth.TokenRevokeApi.as_view(), name="api-token-revoke"),
    path("prompts/", apis.PromptListCreateApi.as_view(), name="api-prompts"),
    path("prompts/<int:prompt_id>/tasks/", apis.PromptTaskCreateApi.as_view(), name="api-prompt-tasks"),
    path("candidates/", apis.CandidateListApi.as_view(), name="api-candidates"),
    path("tasks/", apis.TaskListApi.as_view(), name="api-tasks"),
    path("tasks/<int:task_id>/", apis.TaskDetailApi.as_view(), name="api-task"),
    path("labels/", apis.LabelListCreateApi.as_view(), name="api-labels"),
    path("runs/", apis.RunListCreateApi.as_view(), name="api-runs"),
    path("runs/<int:run_id>/", apis.RunDetailApi.as_view(), name="api-run"),
    path("runs/<int:run_id>/cancel/", apis.RunCancelApi.as_view(), name="api-run-cancel"),
    path("versions/", apis.VersionListApi.as_view(), name="api-versions"),
    path("versions/<int:version_id>/promote/", apis.VersionPromoteApi.as_view(), name="api-version-promote"),
    path("versions/<int:version_id>/labels/", apis.VersionLabelsApi.as_view(), name="api-version-labels"),
    path("version-events/", apis.VersionEventListApi.as_view(), name="api-version-events"),
    path("reward-models/", apis.RewardModelListApi.as_view(), name="api-reward-models"),
    path(
        "reward-models/<int:reward_model_id>/promote/",
        apis.RewardModelPromoteApi.as_view(),
        name="api-reward-model-promote",
    ),
    path("projects/", apis.ProjectListCreateApi.as_view(), name="api-projects"),
    path("projects/<int:project_id>/", apis.ProjectDetailApi.as_view(), name="api-project"),
    path("projects/<int:project_id>/members/", apis.ProjectMembersApi.as_view(), name="api-project-members"),
    path(
        "projects/<int:project_id>/members/<str:username>/", apis.ProjectMemberApi.as_view(), name="api-project-member"
    ),
    path("projects/<int:project_id>/next/", apis.ProjectNextApi.as_view(), name="api-project-next"),
    path("projects/<int:project_id>/generate/", apis.ProjectGenerateApi.as_view(), name="api-project-generate"),
    path("projects/<int:project_id>/arena/", apis.ProjectArenaApi.as_view(), name="api-project-arena"),
    path("generation-jobs/", apis.GenerationJobListApi.as_view(), name="api-generation-jobs"),
    path("followups/", apis.FollowupListApi.as_view(), name="api-followups"),
    path("generation-jobs/<int:job_id>/", apis.GenerationJobDetailApi.as_view(), name="api-generation-job"),
    path("projects/<int:project_id>/import/", apis.ProjectImportApi.as_view(), name="api-project-import"),
    path("projects/<int:project_id>/export/", apis.ProjectExportApi.as_view(), name="api-project-export"),
    path("imports/", apis.ImportJobListApi.as_view(), name="api-imports"),
    path("imports/<int:job_id>/", apis.ImportJobDetailApi.as_view(), name="api-import"),
    path("projects/<int:project_id>/recipe/", apis.ProjectRecipeApi.as_view(), name="api-project-recipe"),
    path("projects/<int:project_id>/quality/", apis.ProjectQualityApi.as_view(), name="api-project-quality"),
    path("assignments/<int:assignment_id>/submit/", apis.AssignmentSubmitApi.as_view(), name="api-assignment-submit"),
    path(
        "assignments/<int:assignment_id>/submit-and-next/",
        apis.AssignmentSubmitNextApi.as_view(),
        name="api-assignment-submit-next",
    ),
    path("assignments/<int:assignment_id>/skip/", apis.AssignmentSkipApi.as_view(), name="api-assignment-skip"),
    path("tasks/bulk/", apis.TaskBulkCreateApi.as_view(), name="api-tasks-bulk"),
    path("conversations/", chat.ConversationListCreateApi.as_view(), name="api-conversations"),
    path("conversations/<int:conversation_id>/", chat.ConversationDetailApi.as_view(), name="api-conversation"),
    path(
        "conversations/<int:conversation_id>/messages/",
        chat.ConversationTurnApi.as_view(),
        name="api-conversation-messages",
    ),
    path("messages/<int:message_id>/stream/", chat.MessageStreamApi.as_view(), name="api-message-stream"),
    path("messages/<int:message_id>/regenerate/", chat.MessageRegenerateApi.as_view(), name="api-message-regenerate"),
    path("messages/<int:message_id>/rank/", chat.MessageRankApi.as_view(), name="api-message-rank"),
    path("messages/<int:message_id>/thumbs/", apis.MessageThumbsApi.as_view(), name="api-message-thumbs"),
    path("people/", campaign.PersonListCreateApi.as_view(), name="api-people"),
    path("people/<str:username>/", campaign.PersonDetailApi.as_view(), name="api-person"),
    path("invitations/", campaign.InvitationListCreateApi.as_view(), name="api-invitations"),
    path(
        "invitations/<int:invitation_id>/revoke/", campaign.InvitationRevokeApi.as_view(), name="api-invitation-revoke"
    ),
    path("tasks/<int:task_id>/adjudication/", campaign.TaskAdjudicationApi.as_view(), name="api-task-adjudication"),
    path("webhooks/", campaign.WebhookListCreateApi.as_view(), name="api-webhooks"),
    path("webhooks/<int:hook_id>/", campaign.WebhookDetailApi.as_view(), name="api-webhook"),
    path(
        "webhooks/<int:hook_id>/deliveries/", campaign.WebhookDeliveryListApi.as_view(), name="api-webhook-deliveries"
    ),
    path(
        "webhook-deliveries/<int:delivery_id>/resend/",
        campaign.WebhookDeliveryResendApi.as_view(),
        name="api-webhook-delivery-resend",
    ),
    path("jobs/", apis.JobListApi.as_view(), name="api-jobs"),
    path("jobs/<str:kind>/<int:job_id>/cancel/", apis.JobCancelApi.as_view(), name="api-job-cancel"),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
]
