"""The admin app, pointed at the back-office site (work queues on the index page)."""

from django.contrib.admin.apps import AdminConfig


class BackOfficeAdminConfig(AdminConfig):
    default_site = "escrowsite.admin.BackOfficeSite"
