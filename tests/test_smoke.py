from tests.conftest import RunningHub


def test_hub_serves_health_over_https(hub: RunningHub) -> None:
    with hub.client() as c:
        assert c.get("/healthz").text == "ok"
        assert "kubearc_hub_http_request_duration_seconds" in c.get("/metrics").text
