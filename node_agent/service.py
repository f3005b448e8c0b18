"""The node agent's control API (mesh.control.v1.NodeAgent)."""
from __future__ import annotations

import grpc

from meshproto import control_pb2 as cpb
from meshproto import control_pb2_grpc as cpb_grpc
from node_agent.agent import NodeAgent

__all__ = ["NodeAgentService"]


class NodeAgentService(cpb_grpc.NodeAgentServicer):
    def __init__(self, agent: NodeAgent) -> None:
        self.agent = agent

    async def Status(self, request: cpb.NodeStatusRequest, context: grpc.aio.ServicerContext) -> cpb.NodeStatusResponse:
        a = self.agent
        replicas = [cpb.ReplicaView(replica_id=m, node=a.cfg.node_id, version=v, state=s, error=e)
                    for m, (v, s, e) in sorted(a.replica_states().items())]
        return cpb.NodeStatusResponse(node_id=a.cfg.node_id, triton_ready=await a.triton.ready(),
                                      triton_restarts=a.triton.restarts, replicas=replicas, cordoned=a.cordoned)

    async def Drain(self, request: cpb.DrainRequest, context: grpc.aio.ServicerContext) -> cpb.DrainResponse:
        if request.undo:
            await self.agent.set_cordon(False)
            verb = "uncordoned"
        else:
            await self.agent.set_cordon(True, draining=not request.cordon_only)
            verb = "cordoned" if request.cordon_only else "draining: its replicas move to other nodes"
        return cpb.DrainResponse(ok=True, message=f"node {self.agent.cfg.node_id} {verb}")
