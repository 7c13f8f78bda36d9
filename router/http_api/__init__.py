"""The OpenAI-compatible HTTP front door, over the same Backend as the gRPC one."""

from router.http_api.app import HTTPConfig, build_app
from router.http_api.chat_template import ChatTemplate
from router.http_api.server import HTTPServer, serve

__all__ = ["ChatTemplate", "HTTPConfig", "HTTPServer", "build_app", "serve"]
