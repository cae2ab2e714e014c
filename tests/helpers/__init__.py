"""Helpers shared by the test folders: ports, processes (uvicorn, workers, Redis), the S3
server, and the small flows the tests publish. Imported as ``tests.helpers.<module>``."""
