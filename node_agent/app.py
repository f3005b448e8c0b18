"""The node agent process: the agent plus its control API server."""
from __future__ import annotations

import dataclasses
import logging

import grpc

from mesh.store import Store
from meshproto import control_pb2_grpc as cpb_grpc
from node_agent.agent import AgentConfig, NodeAgent
from node_agent.service import NodeAgentService

__all__ = ["NodeAgentApp", "DEFAULT_AGENT_PORT"]

log = logging.getLogger(__name__)
DEFAULT_AGENT_PORT = 8011


class NodeAgentApp:
    def __init__(self, cfg: AgentConfig, store: Store, control_port: int = DEFAULT_AGENT_PORT) -> None:
        self._server = grpc.aio.server()
        bound = self._server.add_insecure_port(f"{cfg.host}:{control_port}")
        if bound == 0:
            raise OSError(f"node agent cannot bind control port {cfg.host}:{control_port} (in use?)")
        self.control_port = bound
        self.agent = NodeAgent(dataclasses.replace(cfg, agent_address=f"{cfg.advertise or cfg.host}:{bound}"), store)
        cpb_grpc.add_NodeAgentServicer_to_server(NodeAgentService(self.agent), self._server)

    async def start(self) -> None:
        await self._server.start()
        await self.agent.start()
        log.info("node agent %s up: tritonserver pid %s, control API on port %d",
                 self.agent.cfg.node_id, self.agent.triton.pid, self.control_port)

    async def stop(self) -> None:
        await self._server.stop(1.0)
        await self.agent.stop()
