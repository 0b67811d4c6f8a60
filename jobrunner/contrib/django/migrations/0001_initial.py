"""The task result table, ``jobrunner_task_result``."""

from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True

    dependencies = []

    operations = [
        migrations.CreateModel(
            name='TaskResultRecord',
            fields=[
                ('id', models.CharField(max_length=64, primary_key=True, serialize=False)),
                ('job_id', models.CharField(blank=True, default='', max_length=64)),
                ('backend', models.CharField(max_length=100)),
                ('task_path', models.CharField(max_length=255)),
                ('queue_name', models.CharField(max_length=100)),
                ('priority', models.IntegerField(default=0)),
                ('run_after', models.DateTimeField(blank=True, null=True)),
                ('status', models.CharField(choices=[
                    ('READY', 'Ready'), ('RUNNING', 'Running'), ('FAILED', 'Failed'),
                    ('SUCCESSFUL', 'Successful')], default='READY', max_length=10)),
                ('args', models.JSONField(default=list)),
                ('kwargs', models.JSONField(default=dict)),
                ('enqueued_at', models.DateTimeField(blank=True, null=True)),
                ('started_at', models.DateTimeField(blank=True, null=True)),
                ('last_attempted_at', models.DateTimeField(blank=True, null=True)),
                ('finished_at', models.DateTimeField(blank=True, null=True)),
                ('return_value', models.JSONField(blank=True, null=True)),
                ('errors', models.JSONField(default=list)),
                ('worker_ids', models.JSONField(default=list)),
            ],
            options={
                'db_table': 'jobrunner_task_result',
                'indexes': [models.Index(fields=['status', 'finished_at'],
                                         name='jobrunner_task_status_idx')],
            },
        ),
    ]
