#!/usr/bin/env python3
"""Call teesql.verifier.v1.Verifier/VerifyPeer with nothing but grpcio and server reflection.

    pip install grpcio grpcio-reflection protobuf
    python3 tools/verify_peer.py 127.0.0.1:50051 sidecar [client-cert.pem]
    python3 tools/verify_peer.py --ca verifier-ca.pem verifier.example:50051 sidecar [client-cert.pem]
    python3 tools/verify_peer.py unix:///run/teesql/verifier.sock sidecar [client-cert.pem]

With --ca the channel is TLS and the verifier's certificate must chain to that CA and name
the host; without it the channel is plaintext (loopback or a unix socket only).

Prints the decision as JSON. No .proto file or generated code is needed: the message
types come from the server's reflection service.
"""
import json
import sys

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def pem_chain_to_der(path):
    import base64
    import re

    text = open(path).read()
    blocks = re.findall(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", text, re.S)
    return [base64.b64decode("".join(b.split())) for b in blocks]


def main():
    args = sys.argv[1:]
    ca = None
    if args[:1] == ["--ca"]:
        ca, args = args[1], args[2:]
    target, purpose = args[0], args[1]
    chain = pem_chain_to_der(args[2]) if len(args) > 2 else []
    if ca:
        with open(ca, "rb") as f:
            channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=f.read()))
    elif target.startswith("unix:"):
        # grpc-core sends the socket path as :authority, which the verifier's HTTP/2
        # server refuses; name the local host instead.
        channel = grpc.insecure_channel(target, options=[("grpc.default_authority", "localhost")])
    else:
        channel = grpc.insecure_channel(target)
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    service = pool.FindServiceByName("teesql.verifier.v1.Verifier")
    method = service.methods_by_name["VerifyPeer"]
    Request = message_factory.GetMessageClass(method.input_type)
    Decision = message_factory.GetMessageClass(method.output_type)
    call = channel.unary_unary(
        f"/{service.full_name}/{method.name}",
        request_serializer=Request.SerializeToString,
        response_deserializer=Decision.FromString,
    )
    request = Request(
        purpose=purpose, chain=chain, user="teesql_read", database="postgres",
        client_addr="127.0.0.1:40000",
    )
    decision = call(request, timeout=10)
    try:
        out = json_format.MessageToDict(
            decision, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
    except TypeError:  # protobuf < 5
        out = json_format.MessageToDict(
            decision, preserving_proto_field_name=True, including_default_value_fields=True
        )
    out["claims"] = json.loads(out.pop("claims_json", "null"))
    print(json.dumps(out, indent=2))
    return 0 if decision.allow else 1


if __name__ == "__main__":
    sys.exit(main())
