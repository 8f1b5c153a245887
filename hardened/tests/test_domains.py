import pytest

from hardened.domains import normalize_hostname, normalize_tenant_domain

SUFFIXES = ("myshopify.com",)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Shop-1.MyShopify.com", "shop-1.myshopify.com"),
        ("  shop.myshopify.com.  ", "shop.myshopify.com"),
        ("bücher.myshopify.com", "xn--bcher-kva.myshopify.com"),
    ],
)
def test_domains_are_normalised(raw: str, expected: str) -> None:
    """Case, surrounding space, trailing dot and Unicode collapse to one spelling."""
    assert normalize_tenant_domain(raw, SUFFIXES) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "https://shop.myshopify.com",
        "shop.myshopify.com:443",
        "shop.myshopify.com/admin",
        "user@shop.myshopify.com",
        "-shop.myshopify.com",
        "shop-.myshopify.com",
        "sh_op.myshopify.com",
        "myshopify.com",
        "shop.myshopify.com.evil.com",
        "evilmyshopify.com",
        "127.0.0.1",
        "a" * 64 + ".myshopify.com",
        ("a" * 60 + ".") * 5 + "myshopify.com",
    ],
)
def test_invalid_domains_are_refused(raw: str) -> None:
    """Schemes, ports, paths, bad labels, look-alike suffixes and IPs are refused."""
    with pytest.raises(ValueError, match=r"must|not"):
        normalize_tenant_domain(raw, SUFFIXES)


def test_hostname_without_suffix_rule() -> None:
    """With no suffixes configured any valid multi-label hostname is accepted."""
    assert normalize_tenant_domain("Example.ORG", ()) == "example.org"
    with pytest.raises(ValueError, match="labels"):
        normalize_hostname("localhost")
