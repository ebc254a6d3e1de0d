from django.db import models
from django.db.models.signals import post_save
from django.dispatch import receiver

from wsgi_isr.django import revalidate_tag


class Note(models.Model):
    slug = models.SlugField(unique=True)
    text = models.TextField()

    class Meta:
        app_label = "django_project"


@receiver(post_save, sender=Note)
def note_saved(sender: type[Note], instance: Note, **kwargs: object) -> None:
    revalidate_tag(f"note-{instance.slug}")
