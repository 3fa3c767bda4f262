"""`puqvpn token ...`: API tokens from the shell, for scripted set-ups."""

import click

from .cli import audit, fail_validation

# The Env the main group made (pass_obj, not pass_env: under `python -m puqvpn.cli` that
# module is loaded twice, so its Env class is not the one this import sees).
pass_env = click.pass_obj


@click.group("token")
def token():
    """API tokens for the HTTP API (/api/v1)."""


@token.command("create")
@click.option("--name", required=True, help="What the token is for, e.g. billing.")
@click.option("--role", type=click.Choice(["admin", "operator", "viewer"]), default="admin", show_default=True)
@click.option("--allowed-ips", default="", metavar="LIST",
              help="Comma-separated source addresses or networks allowed to use it (default: any).")
@click.option("--expires", metavar="YYYY-MM-DD", help="Last day the token works (UTC).")
@pass_env
def create(env, name, role, allowed_ips, expires):
    """Create a token and print it once: it is stored only as a hash."""
    from .services import tokens
    from .services.validation import ValidationError
    try:
        row, secret = tokens.create(env.db, name, role, allowed_ips, expires)
    except ValidationError as error:
        fail_validation(error)
    audit(env, "token.create", row["name"], detail=f"role {row['role']}")
    click.echo(secret)
    click.echo(f"Token {row['name']} ({row['role']}) created. It is not shown again.", err=True)


@token.command("list")
@pass_env
def list_tokens(env):
    """Tokens with their role, limits and last use (never the token itself)."""
    from .services import tokens
    rows = tokens.list_all(env.db)
    if not rows:
        click.echo("No API tokens.")
    for row in rows:
        click.echo(f"{row['id']:>4}  {row['name']}  {row['role']}  {tokens.state(row)}  "
                   f"from {row['allowed_ips'] or 'anywhere'}  expires {row['expires_at'] or 'never'}  "
                   f"last used {row['last_used_at'] or 'never'}")


@token.command("revoke")
@click.argument("name")
@pass_env
def revoke(env, name):
    """Revoke the token called NAME: requests with it are refused from now on."""
    from .services import tokens
    row = tokens.get(env.db, name)
    if row is None:
        raise click.ClickException(f"no token named {name}")
    tokens.revoke(env.db, row["id"])
    audit(env, "token.revoke", name)
    click.echo(f"Token {name} revoked.")
