"""The network contract: every registered network is a Network built from a NetworkConfig, checkpoints record it by
its registered name, and damaged configurations fail with one message naming the class."""
from __future__ import annotations

import json

import pytest
import torch

from mass_nn.errors import MassError, PlansValidationError
from mass_nn.model.pretrained_networks import CLASSIFIERS_FROM_PRETRAINED, SEGMENTERS_FROM_PRETRAINED
from mass_nn.networks.build import build_network
from mass_nn.networks.in_context.config import InContextNetworkConfig
from mass_nn.networks.in_context.fixed_class_segmenter import FixedClassConfig, FixedClassSegmenter
from mass_nn.networks.network_base import Network, NetworkConfig, NetworkConfigError
from mass_nn.registry import NETWORKS


@pytest.mark.parametrize("name", NETWORKS.names())
def test_every_registered_network_follows_the_contract(name):
    network_class = NETWORKS.get(name)
    assert issubclass(network_class, Network)
    assert issubclass(network_class.config_class, NetworkConfig)
    assert NETWORKS.name_of(network_class) == name
    for downstream in (network_class.downstream_network, network_class.classification_network):
        assert downstream is None or issubclass(NETWORKS.get(downstream), Network)
    # the model layer has a builder for every hand-over a network names
    assert network_class.downstream_network in (None, "FixedClassSegmenter", *SEGMENTERS_FROM_PRETRAINED)
    assert network_class.classification_network in (None, *CLASSIFIERS_FROM_PRETRAINED)


def test_an_unregistered_class_has_no_name():
    class Unregistered(Network):
        pass

    with pytest.raises(MassError, match="Unregistered is not a registered network"):
        NETWORKS.name_of(Unregistered)


def test_a_network_is_rebuilt_from_its_name_and_saved_configuration():
    config = FixedClassConfig(InContextNetworkConfig.tiny(), ["liver", "spleen"], [1, 6])
    network = FixedClassSegmenter(config)
    saved = json.loads(json.dumps(network.config.to_dict()))  # as a checkpoint's JSON header holds it
    rebuilt = build_network(NETWORKS.name_of(type(network)), saved)
    assert isinstance(rebuilt, FixedClassSegmenter) and rebuilt.config == config
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
        {k: v.shape for k, v in network.state_dict().items()}
    rebuilt.load_state_dict(network.state_dict())
    image = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(image), network.eval()(image))


def test_damaged_configurations_name_the_class_and_the_problem():
    good = FixedClassConfig(InContextNetworkConfig.tiny(), ["liver"], [1]).to_dict()
    with pytest.raises(NetworkConfigError, match=r"FixedClassConfig: unknown field\(s\) \['depth'\]"):
        FixedClassConfig.from_dict({**good, "depth": 3})
    with pytest.raises(NetworkConfigError, match="FixedClassConfig: need one label value per class name"):
        FixedClassConfig.from_dict({**good, "label_values": [1, 2]})
    with pytest.raises(NetworkConfigError, match=r"FixedClassConfig.network.channels\[0\]: must be an integer"):
        FixedClassConfig.from_dict({**good, "network": {**good["network"], "channels": ["8", 16, 32, 64, 128]}})
    # one error type for both callers: plans readers catch PlansValidationError, builders ValueError
    assert issubclass(NetworkConfigError, PlansValidationError) and issubclass(NetworkConfigError, ValueError)
