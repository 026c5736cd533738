"""Staff roles: the Support and Finance groups, and the permissions of the staff actions.

Support views everything and may retry failed notifications; it has no action that moves
money or changes an escrow's status. Finance views everything and may take every staff
action. Superusers may do everything anyway.

Content types and permissions are created here if missing (on a fresh database Django
creates them only after all migrations ran); they are named as Django would name them,
so its post-migrate step finds them and adds nothing. The lists are frozen, as a
migration must be: a model added later needs its view permission granted by a later
migration.
"""

from django.db import migrations

# (app_label, model_name, verbose_name) of every back-office record.
VIEWED_MODELS = [
    ("escrow", "escrow", "escrow"),
    ("escrow", "escrowholding", "escrow holding"),
    ("escrow", "statuschange", "status change"),
    ("escrow", "staffaction", "staff action"),
    ("wallets", "customer", "customer"),
    ("wallets", "account", "account"),
    ("wallets", "transfer", "transfer"),
    ("wallets", "transaction", "transaction"),
    ("wallets", "adjustmentrequest", "adjustment request"),
    ("payments", "webhookreceipt", "webhook receipt"),
    ("payments", "paymentevent", "payment event"),
    ("notifications", "notification", "notification"),
]

# Staff-action permissions, all on the Escrow content type (checked as "escrow.<codename>").
ACTION_PERMISSIONS = [
    ("reprocess_receipt", "Can reprocess a webhook delivery"),
    ("confirm_payment_by_hand", "Can confirm a payment by hand from provider evidence"),
    ("resolve_suspense_payment", "Can attach or credit a payment parked in suspense"),
    ("extend_deadline", "Can extend an escrow deadline"),
    ("cancel_escrow", "Can cancel an escrow"),
    ("refund_escrow", "Can refund an escrow"),
    ("release_escrow", "Can release an escrow"),
    ("resolve_dispute", "Can resolve a dispute"),
    ("adjust_wallet", "Can adjust a customer wallet"),
    ("approve_adjustment", "Can approve or reject a wallet adjustment request"),
    ("retry_notification", "Can retry failed notifications"),
]
SUPPORT_ACTIONS = ["retry_notification"]

SUPPORT = "Support"
FINANCE = "Finance"


def create_groups(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    Permission = apps.get_model("auth", "Permission")
    Group = apps.get_model("auth", "Group")

    def content_type(app_label, model):
        return ContentType.objects.get_or_create(app_label=app_label, model=model)[0]

    def permission(ct, codename, name):
        return Permission.objects.get_or_create(
            content_type=ct, codename=codename, defaults={"name": name}
        )[0]

    views = [
        permission(content_type(app_label, model), f"view_{model}", f"Can view {verbose}")
        for app_label, model, verbose in VIEWED_MODELS
    ]
    escrow_ct = content_type("escrow", "escrow")
    actions = {
        codename: permission(escrow_ct, codename, name) for codename, name in ACTION_PERMISSIONS
    }

    support, _ = Group.objects.get_or_create(name=SUPPORT)
    support.permissions.add(*views, *(actions[c] for c in SUPPORT_ACTIONS))
    finance, _ = Group.objects.get_or_create(name=FINANCE)
    finance.permissions.add(*views, *actions.values())


def remove_groups(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    Group.objects.filter(name__in=[SUPPORT, FINANCE]).delete()
    Permission.objects.filter(
        content_type__app_label="escrow",
        content_type__model="escrow",
        codename__in=[codename for codename, _ in ACTION_PERMISSIONS],
    ).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("escrow", "0004_append_only_history"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_groups, remove_groups)]
