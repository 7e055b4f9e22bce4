"""A client of the OCI distribution spec: pull, push and login against registries.

Imported only by ``hutch pull``/``push``/``login``/``logout`` and by ``hutch run`` when an image is
missing; a ``hutch run`` of an image in the store never loads it.

    transport.py    HTTP(S) connections per thread with keep-alive; TLS trust (system + certs.d)
    auth.py         WWW-Authenticate challenges; Bearer tokens per scope (reused, refreshed); Basic
    credentials.py  ~/.docker/config.json ``auths`` (DOCKER_CONFIG honoured), written atomically
    client.py       the spec's endpoints, error mapping (401, 404, 429 with Retry-After)
    pull.py         manifest/index resolution, parallel verified downloads with Range resume, add to store
    push.py         blob existence checks, cross-repository mounts, monolithic and chunked uploads
    progress.py     Docker-style progress: live lines on a terminal, plain lines otherwise
"""
