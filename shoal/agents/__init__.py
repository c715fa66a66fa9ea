"""The agent SDK: declare agents, write task handlers, run them on the fleet's task subjects."""

from shoal.agents.agent import Agent, Handler
from shoal.agents.context import TaskContext
from shoal.agents.errors import (
    ApprovalDenied,
    ApprovalRequired,
    BudgetExhausted,
    DelegationFailed,
    Killed,
    ModelError,
    PermanentTaskError,
    PolicyDenied,
    ToolFailed,
)
from shoal.agents.http_model import OpenAICompatibleClient
from shoal.agents.models import (
    ChatMessage,
    ChatRequest,
    Completion,
    ModelClient,
    OfflineModelClient,
)
from shoal.agents.runtime import AgentRuntime
from shoal.agents.tools import Tool, ToolEnv, tool
from shoal.schemas.manifest import CapabilityManifest, ToolGrant

__all__ = [
    "Agent",
    "AgentRuntime",
    "ApprovalDenied",
    "ApprovalRequired",
    "BudgetExhausted",
    "CapabilityManifest",
    "ChatMessage",
    "ChatRequest",
    "Completion",
    "DelegationFailed",
    "Handler",
    "Killed",
    "ModelClient",
    "ModelError",
    "OfflineModelClient",
    "OpenAICompatibleClient",
    "PermanentTaskError",
    "PolicyDenied",
    "TaskContext",
    "Tool",
    "ToolEnv",
    "ToolFailed",
    "ToolGrant",
    "tool",
]
