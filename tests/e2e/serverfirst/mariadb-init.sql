-- Run by mariadbd at every start (--init-file): the tests' user, allowed from any host.
CREATE USER IF NOT EXISTS 'mesh'@'%' IDENTIFIED BY 'mesh';
GRANT ALL PRIVILEGES ON *.* TO 'mesh'@'%';
