"""The server's gateway settings (DESIGN §7) map onto the adapters' configuration."""

from __future__ import annotations

import pytest

from server.settings import Settings


def test_no_gateway_variables_offer_no_gateway() -> None:
    assert Settings.from_environ({}).gateways_config().names == ()


def test_each_gateway_is_offered_once_its_credentials_are_set() -> None:
    settings = Settings.from_environ(
        {
            "STRIPE_API_KEY": "sk_test_1",
            "STRIPE_WEBHOOK_SECRET": "whsec_1",
            "PHONEPE_MERCHANT_ID": "PGTESTPAYUAT",
            "PHONEPE_SALT_KEY": "salt",
            "PHONEPE_SALT_INDEX": "2",
            "SANDBOX_API_BASE": "http://127.0.0.1:8001",
            "SANDBOX_WEBHOOK_SECRET": "sbx",
        }
    )
    config = settings.gateways_config()
    assert config.names == ("phonepe", "sandbox", "stripe")
    assert config.stripe is not None and config.stripe.api_base == "https://api.stripe.com"
    assert config.phonepe is not None and config.phonepe.scheme == "v1"
    assert config.phonepe.salt_index == 2
    assert config.sandbox is not None and config.sandbox.webhook_secret == "sbx"


def test_phonepe_v2_by_client_credentials_and_api_base_moves_both_hosts() -> None:
    settings = Settings.from_environ(
        {
            "PHONEPE_CLIENT_ID": "CLIENT",
            "PHONEPE_CLIENT_SECRET": "s",
            "PHONEPE_CALLBACK_USERNAME": "u",
            "PHONEPE_CALLBACK_PASSWORD": "p",
            "PHONEPE_API_BASE": "http://127.0.0.1:9200",
        }
    )
    phonepe = settings.gateways_config().phonepe
    assert phonepe is not None and phonepe.scheme == "v2"
    assert phonepe.resolved_api_base == phonepe.resolved_auth_base == "http://127.0.0.1:9200"


@pytest.mark.parametrize(
    ("environ", "names"),
    [
        ({"STRIPE_API_KEY": "sk"}, "STRIPE_WEBHOOK_SECRET"),
        ({"SANDBOX_API_BASE": "http://x"}, "SANDBOX_WEBHOOK_SECRET"),
        ({"PHONEPE_MERCHANT_ID": "m"}, "PHONEPE_SALT_KEY"),
        ({"PHONEPE_CLIENT_ID": "c"}, "PHONEPE_CLIENT_SECRET"),
    ],
)
def test_a_half_configured_gateway_fails_start_up_naming_the_variable(
    environ: dict[str, str], names: str
) -> None:
    with pytest.raises(ValueError, match=names):
        Settings.from_environ(environ)


def test_gateway_secrets_stay_out_of_the_settings_repr() -> None:
    settings = Settings(stripe_api_key="sk_live_secret", phonepe_salt_key="salty")
    assert "sk_live_secret" not in repr(settings) and "salty" not in repr(settings)
