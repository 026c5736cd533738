"""Finance may acknowledge a flagged webhook delivery (clears the flag, audited).

Support does not get it: the flag is how a late credit or a conflict reaches Finance's
work queue, and only Finance decides that nothing more is needed.
"""

from django.db import migrations

CODENAME = "acknowledge_receipt"
NAME = "Can acknowledge a flagged webhook delivery"
FINANCE = "Finance"


def grant(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    Permission = apps.get_model("auth", "Permission")
    Group = apps.get_model("auth", "Group")
    escrow_ct = ContentType.objects.get_or_create(app_label="escrow", model="escrow")[0]
    permission = Permission.objects.get_or_create(
        content_type=escrow_ct, codename=CODENAME, defaults={"name": NAME}
    )[0]
    Group.objects.get_or_create(name=FINANCE)[0].permissions.add(permission)


def revoke(apps, schema_editor):
    Permission = apps.get_model("auth", "Permission")
    Permission.objects.filter(
        content_type__app_label="escrow", content_type__model="escrow", codename=CODENAME
    ).delete()


class Migration(migrations.Migration):
    dependencies = [("escrow", "0005_staff_groups")]

    operations = [migrations.RunPython(grant, revoke)]
