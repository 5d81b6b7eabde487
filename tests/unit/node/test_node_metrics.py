from __future__ import annotations

from prometheus_client.core import CounterMetricFamily

from interceptor.node.metrics import NodeMetrics, surface_of


def test_surface_of() -> None:
    assert surface_of("/") == "ec2"
    assert surface_of("/latest/meta-data/") == "ec2"
    assert surface_of("/2009-04-04/meta-data/") == "ec2"
    assert surface_of("/openstack/latest/meta_data.json") == "openstack"
    assert surface_of("/nocloud/meta-data") == "nocloud"
    assert surface_of("/metadata") == "xml"
    assert surface_of("/interceptor/v1/guest-data/k") == "interceptor"
    assert surface_of("/favicon.ico") == "other"


def test_forget_instance_removes_series() -> None:
    m = NodeMetrics()
    m.observe_vm_request("i-1")
    m.observe_vm_request("i-2")
    m.observe_vm_refusal("i-1", "rate_limited")
    m.observe_vm_refusal("i-1", "token_expired")
    text = m.render().decode()
    assert 'instance_id="i-1"' in text and 'instance_id="i-2"' in text
    m.forget_instance("i-1")
    text = m.render().decode()
    assert 'instance_id="i-1"' not in text and 'instance_id="i-2"' in text
    m.observe_vm_request("i-1")  # comes back cleanly
    assert 'interceptor_node_vm_requests_total{instance_id="i-1"} 1.0' in m.render().decode()


def test_register_collector_and_build_info() -> None:
    m = NodeMetrics()

    def datapath() -> list[CounterMetricFamily]:
        fam = CounterMetricFamily("interceptor_node_datapath_steered_packets",
                                  "Packets steered", labels=["tap"])
        fam.add_metric(["tap1"], 12)
        return [fam]

    m.register_collector(datapath)
    text = m.render().decode()
    assert 'interceptor_node_datapath_steered_packets_total{tap="tap1"} 12.0' in text
    assert "interceptor_node_build_info{" in text


def test_private_registry() -> None:
    a, b = NodeMetrics(), NodeMetrics()  # no duplicate-registration error
    a.observe_request("ec2", 200, 0.001)
    assert 'surface="ec2"' in a.render().decode()
    assert 'surface="ec2"' not in b.render().decode()
