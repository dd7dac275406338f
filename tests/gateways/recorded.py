"""Gateway answers as the gateways document and send them (trimmed of fields we never read)."""

from __future__ import annotations

from typing import Any

# Stripe API reference, "The PaymentIntent object" (api version 2024-06-20), as created.
STRIPE_INTENT_CREATED: dict[str, Any] = {
    "id": "pi_3MtwBwLkdIwHu7ix28a3tqPa",
    "object": "payment_intent",
    "amount": 2000,
    "amount_received": 0,
    "automatic_payment_methods": {"enabled": True},
    "capture_method": "automatic",
    "client_secret": "pi_3MtwBwLkdIwHu7ix28a3tqPa_secret_YrKJUKribcBjcG8HVhfZluoGH",
    "confirmation_method": "automatic",
    "created": 1680800504,
    "currency": "usd",
    "last_payment_error": None,
    "latest_charge": None,
    "livemode": False,
    "metadata": {"reference": "pay_7", "order_id": "ord_42"},
    "next_action": None,
    "status": "requires_payment_method",
}

STRIPE_INTENT_SUCCEEDED: dict[str, Any] = {
    **STRIPE_INTENT_CREATED,
    "amount_received": 2000,
    "latest_charge": "ch_3MtwBwLkdIwHu7ix28ODvjw1",
    "status": "succeeded",
}

STRIPE_INTENT_DECLINED: dict[str, Any] = {
    **STRIPE_INTENT_CREATED,
    "latest_charge": "ch_3MtwBwLkdIwHu7ix2Declined",
    "last_payment_error": {
        "code": "card_declined",
        "decline_code": "generic_decline",
        "type": "card_error",
    },
    "status": "requires_payment_method",
}

STRIPE_REFUND: dict[str, Any] = {
    "id": "re_1Nispe2eZvKYlo2Cd31jOCgZ",
    "object": "refund",
    "amount": 1000,
    "charge": "ch_3MtwBwLkdIwHu7ix28ODvjw1",
    "created": 1692942318,
    "currency": "usd",
    "metadata": {"reference": "ref_1"},
    "payment_intent": "pi_3MtwBwLkdIwHu7ix28a3tqPa",
    "reason": None,
    "status": "succeeded",
}

STRIPE_ERROR_400: dict[str, Any] = {
    "error": {
        "code": "parameter_invalid_integer",
        "message": "Invalid integer: ten",
        "param": "amount",
        "type": "invalid_request_error",
    }
}

# PhonePe v1 docs, "Pay API" sample response.
PHONEPE_V1_PAY: dict[str, Any] = {
    "success": True,
    "code": "PAYMENT_INITIATED",
    "message": "Payment initiated",
    "data": {
        "merchantId": "PGTESTPAYUAT",
        "merchantTransactionId": "MT7850590068188104",
        "instrumentResponse": {
            "type": "PAY_PAGE",
            "redirectInfo": {
                "url": "https://mercury-uat.phonepe.com/transact/simulator?token=MjdkNmQ0NjM2MTk5ZTlmNDcxYjY3NTAxNTY5MDFhZDk2ZjFjMDY0YTRiN2VhMjgzNjIwMjBmNzUwN2JiNTkxOWUwNDVkMTM2YTllOTpkNzNkNmM2NWQ2MWNiZjVhM2MwOWMzODU0ZGEzMDczNA",
                "method": "GET",
            },
        },
    },
}

# PhonePe v1 docs, "Check Status API" sample responses.
PHONEPE_V1_STATUS_SUCCESS: dict[str, Any] = {
    "success": True,
    "code": "PAYMENT_SUCCESS",
    "message": "Your payment is successful.",
    "data": {
        "merchantId": "PGTESTPAYUAT",
        "merchantTransactionId": "MT7850590068188104",
        "transactionId": "T2111221437456190170379",
        "amount": 100,
        "state": "COMPLETED",
        "responseCode": "SUCCESS",
        "paymentInstrument": {"type": "UPI", "utr": "206378866112"},
    },
}
PHONEPE_V1_STATUS_PENDING: dict[str, Any] = {
    "success": True,
    "code": "PAYMENT_PENDING",
    "message": "Your payment is in pending state.",
    "data": {
        "merchantId": "PGTESTPAYUAT",
        "merchantTransactionId": "MT7850590068188104",
        "transactionId": "T2111221437456190170379",
        "amount": 100,
        "state": "PENDING",
        "responseCode": "PENDING",
    },
}
PHONEPE_V1_INTERNAL_ERROR: dict[str, Any] = {
    "success": False,
    "code": "INTERNAL_SERVER_ERROR",
    "message": (
        "There is an error trying to process your transaction at the moment. "
        "Please try again in a while."
    ),
}
PHONEPE_V1_NOT_FOUND: dict[str, Any] = {
    "success": False,
    "code": "TRANSACTION_NOT_FOUND",
    "message": "No Transaction found with the given details.",
}

# PhonePe v1 docs, "Server-to-Server Callback" / callback verification sample (a failure).
PHONEPE_V1_CALLBACK_RESPONSE = (
    "eyJzdWNjZXNzIjpmYWxzZSwiY29kZSI6IlBBWU1FTlRfRVJST1IiLCJtZXNzYWdlIjoiUGF5bWVudCBGYWlsZWQiLCJk"
    "YXRhIjp7Im1lcmNoYW50SWQiOiJtZXJjaGFudElkIiwibWVyY2hhbnRUcmFuc2FjdGlvbklkIjoibWVyY2hhbnRUcmFu"
    "c2FjdGlvbklkIiwidHJhbnNhY3Rpb25JZCI6IkZUWDIzMDYwMTE1NDMxOTU3MTYzMjM5IiwiYW1vdW50IjoxMDAsInN0"
    "YXRlIjoiRkFJTEVEIiwicmVzcG9uc2VDb2RlIjoiUkVRVUVTVF9ERUNMSU5FX0JZX1JFUVVFU1RFRSIsInBheW1lbnRJ"
    "bnN0cnVtZW50IjpudWxsfX0="
)

PHONEPE_V1_REFUND: dict[str, Any] = {
    "success": True,
    "code": "PAYMENT_PENDING",
    "message": "Your request is in pending state.",
    "data": {
        "merchantId": "PGTESTPAYUAT",
        "merchantTransactionId": "ROD620471739210623",
        "transactionId": "TR620471739210623",
        "amount": 1000,
        "state": "PENDING",
        "responseCode": "PENDING",
    },
}

# PhonePe v2 docs (Standard Checkout): authorization, pay, order status, refund, webhook.
PHONEPE_V2_TOKEN: dict[str, Any] = {
    "access_token": "eyJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJpZGVudGl0eU1hbmFnZXIifQ.sig",
    "encrypted_access_token": "eyJhbGciOiJIUzI1NiJ9.encrypted",
    "expires_in": None,
    "issued_at": 1780000000,
    "expires_at": 1780003600,
    "session_expires_at": 1780003600,
    "token_type": "O-Bearer",
}
PHONEPE_V2_PAY: dict[str, Any] = {
    "orderId": "OMO2403282020198641071317",
    "state": "PENDING",
    "expireAt": 1711867462542,
    "redirectUrl": "https://mercury-uat.phonepe.com/transact/uat_v2?token=v2token",
}
PHONEPE_V2_STATUS_COMPLETED: dict[str, Any] = {
    "orderId": "OMO2403282020198641071317",
    "state": "COMPLETED",
    "amount": 1000,
    "expireAt": 1711867462542,
    "paymentDetails": [
        {
            "paymentMode": "UPI_QR",
            "transactionId": "OM2403282020198651071949",
            "timestamp": 1711867462542,
            "amount": 1000,
            "state": "COMPLETED",
        }
    ],
}
PHONEPE_V2_NOT_FOUND: dict[str, Any] = {
    "code": "TRANSACTION_NOT_FOUND",
    "message": "No transaction found",
}
PHONEPE_V2_REFUND: dict[str, Any] = {
    "refundId": "OMR7878098045517540996",
    "amount": 1234,
    "state": "PENDING",
}
PHONEPE_V2_REFUND_STATUS: dict[str, Any] = {
    "originalMerchantOrderId": "MO1",
    "merchantRefundId": "R1",
    "amount": 1234,
    "state": "COMPLETED",
    "paymentDetails": [],
}
PHONEPE_V2_WEBHOOK_COMPLETED: dict[str, Any] = {
    "event": "checkout.order.completed",
    "payload": {
        "orderId": "OMO2403282020198641071317",
        "merchantId": "MERCHANTUAT",
        "merchantOrderId": "MO1",
        "state": "COMPLETED",
        "amount": 1000,
        "expireAt": 1724866793837,
        "paymentDetails": [
            {
                "paymentMode": "UPI_QR",
                "transactionId": "OM2403282020198651071949",
                "timestamp": 1724866793837,
                "amount": 1000,
                "state": "COMPLETED",
            }
        ],
    },
}
PHONEPE_V2_WEBHOOK_REFUND: dict[str, Any] = {
    "event": "pg.refund.completed",
    "payload": {
        "merchantId": "MERCHANTUAT",
        "merchantRefundId": "R1",
        "originalMerchantOrderId": "MO1",
        "refundId": "OMR7878098045517540996",
        "amount": 1234,
        "state": "COMPLETED",
    },
}
