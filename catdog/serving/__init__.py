"""The serving wing: a TF Serving stand-in (server, API, transports, model management) and its
client. It imports only catdog's ground modules (contract, errors, fields, images for the
client) and itself, never training code, so a server process loads no model-building code.

    status, tensors, json_tensor   TF Serving's codes, TensorProto ⇄ numpy, REST JSON rules
    options                        ServerOptions → the serve flags
    config_files, metrics          TF Serving's text-proto configs, Prometheus page
    servable, batching, server_core   versions loaded, batched and managed
    api                            each call once; grpc_service and rest are thin transports
    server                         assembly and main;   client: gRPC + REST client
    infra_validation               a candidate loaded and asked as the server would, for the
                                   publish gate (catdog/publish.py runs it in its own process)
"""
